"""The `@metal/<name>` pyinfra connector: a node that may not have an OS yet."""

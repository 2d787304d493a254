"""One sub-package per role: facts, operations, parsers and the deploy that composes them."""

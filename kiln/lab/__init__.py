"""kiln's lab: a simulated GPU cluster on one Linux machine (see lab/README.md)."""

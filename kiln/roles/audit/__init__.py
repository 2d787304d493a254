"""Audit: read every pinned version and firmware from the node and report drift."""

from pyinfra.api import deploy

from kiln.core.outcomes import not_built


@deploy("Audit: compare each node with its manifest, change nothing")
def audit() -> None:
    not_built(stage="audit", awaiting="Pin the stack (facts of roles/base, nvidia, firmware)")

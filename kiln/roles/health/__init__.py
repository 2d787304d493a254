"""Health: single-node checks."""

from pyinfra.api import deploy

from kiln.core.outcomes import not_built


@deploy("Health: single-node checks")
def health() -> None:
    not_built(stage="health", awaiting="the health stage (roles/health)")

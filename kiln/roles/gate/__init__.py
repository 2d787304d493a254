"""Gate: pool the nodes that passed, quarantine the rest."""

from pyinfra.api import deploy

from kiln.core.outcomes import not_built


@deploy("Gate: pool the nodes that passed, quarantine the rest")
def gate() -> None:
    not_built(stage="gate", awaiting="the gate (roles/gate)")

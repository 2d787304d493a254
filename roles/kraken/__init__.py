"""Kraken: P2P registry components and the runtime mirror."""

from pyinfra.api import deploy

from roles.stages import not_built


@deploy("Kraken: P2P registry components and the runtime mirror")
def kraken() -> None:
    not_built(stage="kraken", awaiting="Distribution (roles/kraken)")

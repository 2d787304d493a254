"""Mirror: local file mirror and its clients."""

from pyinfra.api import deploy

from roles.stages import not_built


@deploy("Mirror: local file mirror and its clients")
def mirror() -> None:
    not_built(stage="mirror", awaiting="Distribution (roles/mirror)")

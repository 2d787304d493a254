"""Firmware: match the manifest, update what drifted."""

from pyinfra.api import deploy

from roles.stages import not_built


@deploy("Firmware: match the manifest, update what drifted")
def firmware() -> None:
    not_built(stage="firmware", awaiting="Pin the stack (roles/firmware)")

"""Provision: image bare metal through MAAS and the BMC."""

from pyinfra.api import deploy

from roles.stages import not_built


@deploy("Provision: image bare metal through MAAS and the BMC")
def provision() -> None:
    not_built(stage="provision", awaiting="Provisioning (MAAS, BMC, the metal connector)")


@deploy("Reprovision: drain, release with erase, commission, deploy")
def reprovision() -> None:
    not_built(stage="reprovision", awaiting="Provisioning (deploy/reprovision.py)")

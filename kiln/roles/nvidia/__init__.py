"""NVIDIA: driver, fabric manager, DCGM, CUDA, NCCL, exact and held.

    nvidia()   the manifest's NVIDIA packages (roles.nvidia.pinsets) installed at exactly
               their versions, pinned (apt preferences, one file per set) and held; a version
               or branch change is one transaction; the running kernel module made the pinned
               driver (reboot through the BMC, or reload); the daemons enabled and running;
               nvidia-smi checked to report the pinned driver.

Host data:
    kiln_nvidia_driver_activation  "reboot" (default) | "reload" (unload and load the module
                                   when no process has a GPU open; never on a lab node,
                                   which shares its host's kernel)
    kiln_nvidia_services           the units to run; default from the manifest: persistence
                                   daemon, fabric manager (with NVSwitches), DCGM
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy

from kiln.core.context import node_context
from kiln.core.errors import KilnError
from kiln.core.manifest import Manifest
from kiln.core.outcomes import refuse
from kiln.roles.base import operations as base_operations
from kiln.roles.nvidia import operations
from kiln.roles.nvidia.pinsets import SCOPE, driver_version, nvidia_pin_sets

ACTIVATIONS = ("reboot", "reload")


def default_services(manifest: Manifest) -> list[str]:
    units = []
    if "nvidia-persistenced" in manifest.packages:
        units.append("nvidia-persistenced")
    if manifest.topology.gpu.nvswitch_count > 0:
        units.append("nvidia-fabricmanager")
    if "dcgm" in manifest.packages:
        units.append("nvidia-dcgm")
    return units


def _activation() -> str:
    activation = host.data.get("kiln_nvidia_driver_activation") or "reboot"
    if activation not in ACTIVATIONS:
        raise KilnError(f"host data kiln_nvidia_driver_activation: {activation!r} is not one of "
                        f"{', '.join(ACTIVATIONS)}")
    return activation


def _services(manifest: Manifest) -> list[str]:
    units = host.data.get("kiln_nvidia_services")
    if units is None:
        return default_services(manifest)
    if not isinstance(units, list) or not all(isinstance(unit, str) and unit for unit in units):
        raise KilnError(f"host data kiln_nvidia_services: {units!r} is not a list of unit names")
    return units


@deploy("NVIDIA: driver, fabric manager, DCGM, CUDA, NCCL, exact and held")
def nvidia() -> None:
    try:
        context = node_context(host)
        manifest, path = context.manifest, context.manifest_path
        sets = nvidia_pin_sets(manifest, str(path))
        activation = _activation()
        services = _services(manifest)
    except KilnError as exc:
        refuse(name="NVIDIA manifest and settings", message=str(exc))
        return
    version = driver_version(manifest)
    pins = [(pin.name, pin.version) for pin_set in sets for pin in pin_set.pins]
    base_operations.apt_index_current(name="apt index has the pinned NVIDIA versions",
                                      pins=pins)
    base_operations.pinned_packages(name="NVIDIA packages exact and held", scope=SCOPE,
                                    sets=sets, manifest=str(path))
    operations.driver_running(name="The pinned driver is the running one", version=version,
                              package=manifest.packages["nvidia-driver"].name,
                              activation=activation, services=services)
    operations.services_running(name="NVIDIA services enabled and running", units=services)
    operations.driver_verified(name="nvidia-smi reports the pinned driver", version=version)

"""Which manifest packages the NVIDIA role pins, grouped in sets that move together.

Fabric manager belongs to the driver set whenever the manifest has it, and the manifest
requires it for every SKU with NVSwitches (roles.manifest). DeepOps installs it only on DGX
systems (it keys on the DGX product name), which is wrong for HGX: an OEM HGX H100 board has
the same four NVSwitches as a DGX H100, and without a running fabric manager of the driver's
exact version the GPUs never finish fabric registration (nvidia-smi -q: Fabric State "In
Progress"), so CUDA initialisation fails with "system not yet initialized" and NCCL has no
NVLink. What decides is the NVSwitch count, not the brand.
"""

from __future__ import annotations

import re

from kiln.core.manifest import Manifest
from kiln.roles.base.aptpins import PinError, PinSet, package_pins, upstream_version

SCOPE = "nvidia"

# (set name, manifest package keys). A driver branch change renames the driver set's
# packages; the plan removes the old branch in the same transaction.
NVIDIA_SETS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("driver", ("nvidia-driver", "nvidia-fabricmanager", "nvidia-persistenced",
                "libnvidia-nscq")),
    ("dcgm", ("dcgm",)),
    ("cuda", ("cuda-toolkit",)),
    ("nccl", ("libnccl2", "libnccl-dev", "nccl-tests")),
    ("container-toolkit", ("nvidia-container-toolkit",)),
)
# Packages of the driver set that must run the driver's exact upstream version.
DRIVER_LOCKSTEP = ("nvidia-fabricmanager", "nvidia-persistenced", "libnvidia-nscq")


def nvidia_keys() -> tuple[str, ...]:
    return tuple(key for _, keys in NVIDIA_SETS for key in keys)


def driver_version(manifest: Manifest) -> str:
    """The upstream driver version the running kernel module must report (570.148.08)."""
    return upstream_version(manifest.packages["nvidia-driver"].version)


def driver_branch(version: str) -> str:
    return version.split(".", 1)[0]


def driver_family(branch: str) -> str:
    """Package names of any *other* driver branch: nvidia-driver-550-server-open,
    libnvidia-compute-550-server, nvidia-fabricmanager-550, libnvidia-nscq-550 ..."""
    return (rf"(?:lib)?nvidia-[a-z0-9.+-]*?-(?!{re.escape(branch)}(?:-|$))\d{{3}}"
            r"(?:-server)?(?:-open)?")


def nvidia_pin_sets(manifest: Manifest, source: str) -> list[PinSet]:
    """The NVIDIA role's pin sets for `manifest` (read from file `source`)."""
    if "nvidia-driver" not in manifest.packages:
        raise PinError(f"{source}: packages.nvidia-driver: not set; the NVIDIA role needs it")
    driver = driver_version(manifest)
    for key in DRIVER_LOCKSTEP:
        pin = manifest.packages.get(key)
        if pin is not None and upstream_version(pin.version) != driver:
            raise PinError(
                f"{source}: packages.{key}: version {pin.version} does not match the driver's "
                f"{driver} (packages.nvidia-driver); it refuses to run against another driver"
            )
    sets = []
    for set_name, keys in NVIDIA_SETS:
        pins = package_pins(manifest.packages, keys)
        if not pins:
            continue
        family = driver_family(driver_branch(driver)) if set_name == "driver" else None
        sets.append(PinSet(SCOPE, set_name, pins, remove_replaced=True, family=family))
    return sets


def unclaimed_keys(manifest: Manifest) -> list[str]:
    """Manifest package keys this role does not install (another role's, e.g. ofed)."""
    return sorted(set(manifest.packages) - set(nvidia_keys()))

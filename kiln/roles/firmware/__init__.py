"""Firmware: every component at the manifest's version, updated from the mirror when not.

    firmware()               the bring-up stage (roles/pipeline.py): GPU nodes' BIOS, BMC,
                             ConnectX and GPU firmware read from the BMC (Redfish), mlxfwmanager
                             and nvidia-smi, matched to firmware/<sku>.yaml, and what differs
                             updated (roles.firmware.operations), at most the manifest's
                             `max_parallel_firmware` nodes at once
    firmware(rolling=True)   the same as a rolling update (deploy/firmware.py): the rollout
                             stops at the first batch in which a node failed

A node that is in the pool is drained (roles/pool, reason "firmware update: …") before
anything is flashed; it stays drained: only the gate puts a node back in the pool.

Host data: kiln_sku / kiln_firmware_dir (the manifest), kiln_bmc (Redfish), kiln_pool_file
(default state/pool.yaml), kiln_mirror_* (roles/mirror: where the blobs are served).
Service nodes are left alone: the SKU manifests describe the GPU nodes' hardware.
"""

from __future__ import annotations

from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy

from kiln.core.errors import KilnError
from kiln.core.manifest import load_manifest, manifest_path
from kiln.roles.base import operations as base_operations
from kiln.roles.base.settings import firmware_dir, manifest_for
from kiln.roles.firmware import operations
from kiln.roles.mirror import mirror_address
from kiln.roles.mirror.settings import settings_from_data

DEFAULT_POOL = "state/pool.yaml"


def is_gpu_node() -> bool:
    return "gpu" in host.groups or host.data.get("kiln_role") == "gpu"


def fleet_parallel() -> int:
    """The smallest `max_parallel_firmware` of the SKUs of the inventory's GPU nodes.

    pyinfra's `_parallel` must be one value for every host of an operation, so a fleet of
    several SKUs is updated at the most cautious one's pace.
    """
    limits = []
    for other in host.state.inventory:
        if "gpu" not in other.groups and other.data.get("kiln_role") != "gpu":
            continue
        sku = other.data.get("kiln_sku")
        if not sku:
            continue
        try:
            limits.append(load_manifest(manifest_path(firmware_dir(other.data), sku))
                          .max_parallel_firmware)
        except KilnError:
            continue  # that host's own run reports its manifest; the rest go on
    return min(limits, default=1)


def mirror_firmware_url() -> tuple[str | None, bool | str]:
    """The mirror's firmware/ URL (plain HTTP, as apt reads it) and the TLS check for it."""
    settings = settings_from_data(host.data)
    address = mirror_address(settings)
    if address is None:
        return None, True
    return settings.http_url(address) + "firmware/", settings.ca or True


@deploy("Firmware: match the manifest, update what drifted")
def firmware(rolling: bool = False) -> None:
    if not is_gpu_node():
        return
    try:
        _, path = manifest_for(host.data)
        url, verify = mirror_firmware_url()
    except KilnError as exc:
        base_operations.refuse(name="Firmware manifest and settings", message=str(exc))
        return
    operations.pinned(
        name="Firmware as the manifest pins (update: drain, flash, reset, check)",
        manifest_file=str(Path(path)),
        mirror_firmware=url,
        mirror_verify=verify,
        pool_file=host.data.get("kiln_pool_file") or DEFAULT_POOL,
        rolling=rolling,
        _parallel=fleet_parallel(),
    )

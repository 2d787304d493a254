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

Host data (through the node context, kiln.core.context): kiln_sku / kiln_firmware_dir (the
manifest), kiln_bmc (Redfish), kiln_pool / kiln_pool_file (the pool backend); and kiln_mirror_*
(roles/mirror: where the blobs are served).
Service nodes are left alone: the SKU manifests describe the GPU nodes' hardware.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pyinfra import host
from pyinfra.api import deploy

from kiln.core.context import node_context
from kiln.core.errors import KilnError
from kiln.core.outcomes import refuse
from kiln.roles.firmware import operations
from kiln.roles.mirror import mirror_address
from kiln.roles.mirror.settings import settings_from_data


def _is_gpu(node: Any) -> bool:
    return "gpu" in node.groups or node_context(node).role == "gpu"


def is_gpu_node() -> bool:
    return _is_gpu(host)


def fleet_parallel() -> int:
    """The smallest `max_parallel_firmware` of the SKUs of the inventory's GPU nodes.

    pyinfra's `_parallel` must be one value for every host of an operation, so a fleet of
    several SKUs is updated at the most cautious one's pace.
    """
    limits = []
    for other in host.state.inventory:
        if not _is_gpu(other):
            continue
        try:
            context = node_context(other)
            if not context.sku:
                continue
            limits.append(context.manifest.max_parallel_firmware)
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
        context = node_context(host)
        _ = context.manifest  # read now: a bad manifest refuses the stage, naming the file
        path = context.manifest_path
        url, verify = mirror_firmware_url()
    except KilnError as exc:
        refuse(name="Firmware manifest and settings", message=str(exc))
        return
    operations.pinned(
        name="Firmware as the manifest pins (update: drain, flash, reset, check)",
        manifest_file=str(Path(path)),
        mirror_firmware=url,
        mirror_verify=verify,
        rolling=rolling,
        _parallel=fleet_parallel(),
    )

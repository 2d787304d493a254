"""The network-boot side of the lab: what a node gets when it boots from PXE.

On a real cluster a node told by its BMC to boot from the network asks MAAS (the rack
controller's DHCP/TFTP/HTTP) what to run: the ephemeral commissioning environment, the
curtin installer of a deploy, or "boot from local disk". The MAAS simulator says which by
recording a *request* for the node here; the lab carries it out when the node's BMC boots it
from PXE (lab/cluster.py), and records the *result* for MAAS to read, as cloud-init and the
commissioning scripts report back to a real MAAS. The BMC never talks to MAAS, and MAAS never
touches a node except through its BMC and this PXE answer.

Files, under `<lab>/netboot/`:
- `<node>.request.json`: `{"action": "commission"}`, `{"action": "erase"}` (a release with
  erase: the ephemeral environment wipes the disk) or `{"action": "deploy", "osystem",
  "distro_series", "hwe_kernel", "user_data", "ssh_keys": [...]}`; consumed by the boot
  that carries it out.
- `<node>.result.json`: `{"action", "status": "ok"|"failed", "error"?, "finished_at",
  "hardware"?}`.

With no request, a PXE boot gets MAAS's "boot local" answer: a node with an installed disk
boots it, a blank one boots nothing.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

ACTIONS = ("commission", "deploy", "erase")


class NetbootError(ValueError):
    pass


def netboot_dir(lab: Path) -> Path:
    return Path(lab) / "netboot"


def _write(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as out:
        json.dump(document, out, indent=2)
    os.replace(tmp, path)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def request(lab: Path, node: str, action: dict[str, Any]) -> None:
    """What the next PXE boot of `node` runs; replaces an earlier request, clears the result."""
    kind = action.get("action")
    if kind not in ACTIONS:
        raise NetbootError(f"netboot request for {node}: action {kind!r} is not one of {ACTIONS}")
    if kind == "deploy":
        keys = action.get("ssh_keys", [])
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise NetbootError(f"netboot request for {node}: ssh_keys must be a list of strings")
    clear_result(lab, node)
    _write(netboot_dir(lab) / f"{node}.request.json", {**action, "requested_at": time.time()})


def pending(lab: Path, node: str) -> dict[str, Any] | None:
    return _read(netboot_dir(lab) / f"{node}.request.json")


def cancel(lab: Path, node: str) -> None:
    (netboot_dir(lab) / f"{node}.request.json").unlink(missing_ok=True)


def result(lab: Path, node: str) -> dict[str, Any] | None:
    return _read(netboot_dir(lab) / f"{node}.result.json")


def clear_result(lab: Path, node: str) -> None:
    (netboot_dir(lab) / f"{node}.result.json").unlink(missing_ok=True)


def record_result(
    lab: Path, node: str, action: str, ok: bool, error: str | None = None, **extra: Any
) -> None:
    document: dict[str, Any] = {
        "action": action,
        "status": "ok" if ok else "failed",
        "finished_at": time.time(),
        **extra,
    }
    if error:
        document["error"] = error
    _write(netboot_dir(lab) / f"{node}.result.json", document)


# What the machines the profiles describe have besides GPUs and HCAs (the profile does not
# model CPUs or memory): an HGX H100 board with two 56-core Xeons and 2 TiB; a 1U service box.
_HOST_RESOURCES = {
    "gpu": {"cpu_count": 224, "memory": 2097152, "architecture": "amd64/generic"},
    "service": {"cpu_count": 64, "memory": 262144, "architecture": "amd64/generic"},
}


def hardware_summary(profile: dict[str, Any]) -> dict[str, Any]:
    """What commissioning reports of a machine: its inventory, none of its faults."""
    nic = profile["mgmt_nic"]
    return {
        **_HOST_RESOURCES[profile["role"]],
        "system": dict(profile["system"]),
        "interfaces": [{"name": nic["name"], "mac_address": nic["mac"], "model": nic["model"]}],
        "gpus": [{"pci_bus_id": g["pci_bus_id"], "serial": g["serial"], "name": g["name"]}
                 for g in profile.get("gpus", [])],
        "hcas": [{"name": h["name"], "node_guid": h["node_guid"], "psid": h["psid"]}
                 for h in profile.get("hcas", [])],
    }

"""What the Mellanox/InfiniBand tools share: naming devices, port states, rates."""

from __future__ import annotations

from typing import Any

from ..view import View

# ibstat's state words -> the numbers ibstatus and ibv_devinfo print beside them
PORT_STATES = {"Down": 1, "Initializing": 2, "Armed": 3, "Active": 4}
PHYS_STATES = {"Sleep": 1, "Polling": 2, "Disabled": 3, "LinkUp": 5, "LinkErrorRecovery": 6}
RATE_NAMES = {10: "10 Gb/sec (4X SDR)", 100: "100 Gb/sec (4X EDR)", 200: "200 Gb/sec (4X HDR)",
              400: "400 Gb/sec (4X NDR)"}


def find_hca(view: View, device: str) -> dict[str, Any] | None:
    """An HCA by any name mst/mlxconfig accept: mlx5_N, PCI address or /dev/mst path."""
    for hca in view.hcas:
        bdf = hca["pci_bdf"]
        if device in (hca["name"], bdf, bdf[5:], hca["mst_device"],
                      hca["mst_device"].rsplit("/", 1)[-1]):
            return hca
    return None


def guid_colons(guid: str) -> str:
    """0x946dae0300a1b2c3 -> 946d:ae03:00a1:b2c3 (ibv_devinfo's spelling)."""
    digits = guid[2:].rjust(16, "0")
    return ":".join(digits[i : i + 4] for i in range(0, 16, 4))


def default_gid(guid: str) -> str:
    return "fe80:0000:0000:0000:" + guid_colons(guid)


def device_type(hca: dict[str, Any]) -> str:
    return {"MT4129": "ConnectX7", "MT4125": "ConnectX6DX", "MT4123": "ConnectX6"}.get(
        hca["ca_type"], "ConnectX7")

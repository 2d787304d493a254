"""Simulated `flint -d DEV q` (NVIDIA MFT): the firmware image on one card.

Field for field as a real capture (tests/fixtures/flint/mstflint-q.connectx6.20.35.1012.txt):
labels padded to 23, the expansion-ROM versions without zero padding ("14.28.15", where
mlxfwmanager prints "14.28.0015"), GUID and MAC each followed by the number of addresses.
"""

from __future__ import annotations

import sys

from ..view import load_view, run_tool
from ._hca import find_hca
from .mlxfwmanager import pending_version


def _rom(version: str) -> str:
    """flint prints ROM versions unpadded: 14.36.0016 -> 14.36.16, 3.7.0500 -> 3.7.500."""
    return ".".join(str(int(part)) for part in version.split("."))


def mac_of(guid: str) -> str:
    """The card's base MAC, from its node GUID (0x946dae0300027e56 -> 946dae027e56)."""
    digits = guid[2:] if guid.startswith("0x") else guid
    return digits[:6] + digits[10:]


def _main(argv: list[str]) -> int:
    args = list(argv)
    device = None
    if "-d" in args and args.index("-d") + 1 < len(args):
        device = args[args.index("-d") + 1]
    if device is None or not any(a in ("q", "query") for a in args):
        sys.stdout.write("-E- Missing device or command (flint -d <device> q)\n")
        return 1
    view = load_view()
    hca = find_hca(view, device)
    if hca is None:
        sys.stdout.write(f"-E- Cannot open Device: {device}. No such file or directory. "
                         "MFE_CR_ERROR\n")
        return 1
    guid = hca["node_guid"][2:]
    mac = mac_of(guid)
    pending = pending_version(view, hca)
    version_lines = [f"FW Version:            {pending or hca['fw_version']}"]
    if pending:
        version_lines.append(f"FW Version(Running):   {hca['fw_version']}")
    out = [
        "Image type:            FS4",
        *version_lines,
        "FW Release Date:       12.2.2025",
        f"Product Version:       {pending or hca['fw_version']}",
        f"Rom Info:              type=UEFI version={_rom(hca['uefi_version'])} "
        "cpu=AMD64,AARCH64",
        f"                       type=PXE version={_rom(hca['pxe_version'])} cpu=AMD64",
        "Description:           UID                GuidsNumber",
        f"Base GUID:             {guid}        4",
        f"Base MAC:              {mac}            4",
        "Image VSD:             N/A",
        "Device VSD:            N/A",
        f"PSID:                  {hca['psid']}",
        "Security Attributes:   secure-fw",
    ]
    sys.stdout.write("\n".join(out) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_tool(_main, argv)

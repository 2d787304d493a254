"""Simulated `flint -d DEV q` (NVIDIA MFT): the firmware image on one card."""

from __future__ import annotations

import sys

from ..view import load_view, run_tool
from ._hca import find_hca
from .mlxfwmanager import pending_version


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
    mac = guid[:6] + guid[10:]
    pending = pending_version(view, hca)
    version_lines = [f"FW Version:            {pending or hca['fw_version']}"]
    if pending:
        version_lines.append(f"FW Version(Running):   {hca['fw_version']}")
    out = [
        "Image type:            FS4",
        *version_lines,
        "FW Release Date:       12.2.2025",
        f"Product Version:       {pending or hca['fw_version']}",
        f"Rom Info:              type=UEFI version={hca['uefi_version']} cpu=AMD64,AARCH64",
        f"                       type=PXE version={hca['pxe_version']} cpu=AMD64",
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

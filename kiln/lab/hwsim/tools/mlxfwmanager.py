"""Simulated `mlxfwmanager` (NVIDIA MFT): `--query`, and `-u -i IMAGE [-y] [-d DEV]`.

An update copies the image into the node's writable flash spool (/run/kiln-hw-flash/, one
copy per card, named `<mlx5_N>--<image>`); the lab checks and activates it at the node's
next reset (lab_hooks.on_node_boot), as a real card runs the new firmware only after one.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

from ..blobs import read_blob_header
from ..view import View, load_view, run_tool
from ._hca import device_type, find_hca

COMPONENT = "connectx7"


def pending_version(view: View, hca: dict[str, Any]) -> str | None:
    """The version waiting in the spool for this card's next reset, if any."""
    if not view.flash_dir.exists():
        return None
    for blob in sorted(view.flash_dir.glob(f"{hca['name']}--*.bin")):
        with blob.open("rb") as handle:
            header = read_blob_header(handle.read(1024))
        if header and header[0] == COMPONENT:
            return header[1]
    return None


def _mac(guid: str) -> str:
    digits = guid[2:]
    return digits[:6] + digits[10:]  # as flint derives it (flint.mac_of)


def _device_block(n: int, hca: dict[str, Any], available: str | None, status: str) -> list[str]:
    avail = available or "N/A"
    return [
        f"Device #{n}:",
        "----------",
        "",
        f"  Device Type:      {device_type(hca)}",
        f"  Part Number:      {hca['part_number']}",
        f"  Description:      {hca['description']}",
        f"  PSID:             {hca['psid']}",
        f"  PCI Device Name:  {hca['mst_device']}",
        f"  Base GUID:        {hca['node_guid'][2:]}",
        f"  Base MAC:         {_mac(hca['node_guid'])}",
        "  Versions:         Current        Available     ",
        f"     FW             {hca['fw_version']:<15}{avail:<14}",
        f"     PXE            {hca['pxe_version']:<15}{'N/A':<14}",
        f"     UEFI           {hca['uefi_version']:<15}{'N/A':<14}",
        "",
        f"  Status:           {status}",
        "",
    ]


def _main(argv: list[str]) -> int:
    args = list(argv)
    image = device = None
    for flags, setter in ((("-i", "--image"), "image"), (("-d", "--dev"), "device")):
        for flag in flags:
            if flag in args and args.index(flag) + 1 < len(args):
                value = args[args.index(flag) + 1]
                if setter == "image":
                    image = value
                else:
                    device = value
    update = "-u" in args or "--update" in args
    yes = "-y" in args or "--yes" in args
    if not update and "--query" not in args and "-q" not in args:
        sys.stdout.write("-E- Nothing to do: use --query, or -u -i <image>\n")
        return 1
    view = load_view()
    hcas = view.hcas
    if device is not None:
        hca = find_hca(view, device)
        if hca is None:
            sys.stdout.write(f"-E- Failed to open device: {device}\n")
            return 1
        hcas = [hca]
    header = None
    if image is not None:
        try:
            with open(image, "rb") as handle:
                header = read_blob_header(handle.read(1024))
        except OSError as exc:
            sys.stdout.write(f"-E- Failed to open image file: {image}: {exc.strerror}\n")
            return 1
        if header is None:
            sys.stdout.write(f"-E- Failed to open image file: {image} - Invalid image\n")
            return 1
    if update and image is None:
        sys.stdout.write("-E- No image given: use -i <image>\n")
        return 1
    out = ["Querying Mellanox devices firmware ...", ""]
    needs = []
    for n, hca in enumerate(hcas, 1):
        available = header[1] if header and header[0] == COMPONENT else None
        if image is None:
            status = "No matching image found"
        elif available is None:
            status = "No matching image found"
        elif available == hca["fw_version"]:
            status = "Up to date"
        else:
            status = "Update required"
            needs.append(hca)
        out += _device_block(n, hca, available, status)
    if not update:
        sys.stdout.write("\n".join(out) + "\n")
        return 0
    if not needs:
        out.append("-I- No devices require firmware update.")
        sys.stdout.write("\n".join(out) + "\n")
        return 0 if header and header[0] == COMPONENT else 1
    out += ["---------", f"Found {len(needs)} device(s) requiring firmware update...", ""]
    sys.stdout.write("\n".join(out) + "\n")
    if not yes:
        sys.stdout.write("Perform FW update? [y/N]: ")
        sys.stdout.flush()
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            sys.stdout.write("-I- Aborted by user\n")
            return 1
    spool = view.flash_dir
    spool.mkdir(parents=True, exist_ok=True)
    for n, hca in enumerate(needs, 1):
        shutil.copyfile(image, spool / f"{hca['name']}--{Path(image).name}")
        sys.stdout.write(f"Device #{n}: Updating FW ...     \n"
                         "FSMST_INITIALIZE -   OK          \n"
                         "Writing Boot image component -   OK          \n"
                         "Done\n\n")
    sys.stdout.write("Restart needed for updates to take effect.\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_tool(_main, argv)

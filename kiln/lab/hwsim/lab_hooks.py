"""What the lab calls on the host: build a node's hardware, boot it, inject faults.

The node builder calls `prepare_node_hardware` when it creates a node and `on_node_boot`
each time the node starts (lab up, reset after imaging, reboot); `kiln lab fault` calls
`fault_command`. Everything here writes `<lab>/hw/<node>/`, which the node sees read-only
at /run/kiln-hw/ (lab/README.md, "Layout contract").
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from .blobs import read_blob_header
from .faults import (
    KINDS,
    FaultError,
    apply_firmware_fault,
    check_against_profile,
    load_faults_file,
    validate_fault,
)
from .profile import (
    BIOS_ATTRIBUTES,
    BIOS_PENDING,
    DEFAULT_SEED,
    IMAGE_KERNEL,
    KNOWN_FIRMWARE,
    generate_profile,
    read_json,
    refresh_boot_log,
    write_json,
)
from .sysfs import write_sysfs
from .view import MLXCONFIG_ACTIVE, load_view

SEED_ENV = "KILN_LAB_SEED"
LAB_DIR_ENV = "KILN_LAB_DIR"
DEFAULT_LAB_DIR = "/var/lib/kiln-lab"
# Marks a root filesystem that has booted once; a reset (fresh upper layer) removes it,
# which is how a boot tells "first boot of a new image" from a reboot.
IMAGE_MARKER = "var/lib/kiln-hwsim/booted"
DRIVER_VERSION_PATH = "usr/share/kiln-hwsim/driver-version"
# Beside the kernel log under hw/<node>/kernel, read-only in the node at /run/kiln-hw/kernel;
# its init binds it over /proc/sys/kernel/osrelease (lab/node_init.py).
KERNEL_RELEASE_PATH = "kernel/osrelease"


def _release_key(release: str) -> tuple[Any, ...]:
    return (*(int(n) for n in re.findall(r"\d+", release)), release)


def booted_kernel(rootfs: Path) -> str:
    """The kernel this boot runs: the newest /boot/vmlinuz-* of the root filesystem (GRUB's
    default entry), or the image's own kernel while no other is installed."""
    releases = [path.name[len("vmlinuz-"):] for path in (Path(rootfs) / "boot").glob(
        "vmlinuz-*")]
    return max(releases, key=_release_key) if releases else IMAGE_KERNEL
MLXCONFIG_PENDING = "mlxconfig-pending.json"


class NodeBootFailed(Exception):
    """The node does not come up (the `boot-fail` fault): its builder marks it failed."""


def hw_path(lab_dir: Path, node_name: str) -> Path:
    return Path(lab_dir) / "hw" / node_name


def _read_faults(directory: Path) -> list[dict[str, Any]]:
    path = directory / "faults.json"
    return read_json(path).get("faults", []) if path.exists() else []


def prepare_node_hardware(
    lab_dir: Path,
    node_name: str,
    index: int,
    role: str,
    faults_file: Path | None,
    firmware: str = "golden",
) -> None:
    """Write hw/<node>/profile.json and faults.json (the faults of `faults_file` for it).

    `role` "gpu" gives an HGX H100 node; any other role a service node (no GPUs or HCAs).
    The profile depends only on $KILN_LAB_SEED (default "kiln-lab"), the node name and
    index, so rebuilding the lab rebuilds the same hardware.
    """
    directory = hw_path(lab_dir, node_name)
    (directory / "flash").mkdir(parents=True, exist_ok=True)
    seed = os.environ.get(SEED_ENV, DEFAULT_SEED)
    profile = generate_profile(node_name, index, role, seed=seed, firmware=firmware)
    faults: list[dict[str, Any]] = []
    if faults_file is not None:
        for n, fault in enumerate(load_faults_file(Path(faults_file))):
            if fault["node"] != node_name:
                continue
            where = f"{faults_file}: faults[{n}] (node {node_name}, kind {fault['kind']})"
            check_against_profile(fault, profile, where)
            if fault["kind"] == "firmware-version":
                apply_firmware_fault(profile, fault)
            faults.append({k: v for k, v in fault.items() if k != "node"})
    write_json(directory / "profile.json", profile)
    write_json(directory / "faults.json", {"faults": faults})
    refresh_sysfs(lab_dir, node_name)


def refresh_sysfs(lab_dir: Path, node_name: str) -> None:
    """Rewrite the node's simulated /sys/class/infiniband tree (hwsim.sysfs) from its
    profile and faults now: at build, at boot and on every fault change."""
    directory = hw_path(lab_dir, node_name)
    write_sysfs(directory, load_view(directory), node_name)


def _driver_log(driver: str, profile: dict[str, Any]) -> list[list[Any]]:
    """The kernel lines of loading the NVIDIA modules at boot."""
    lines: list[tuple[float, str]] = [
        (9.412331, "nvidia: loading out-of-tree module taints kernel."),
        (9.412339, "nvidia: module verification failed: signature and/or required key missing "
                   "- tainting kernel"),
        (9.468770, "nvidia-nvlink: Nvlink Core is being initialized, major device number 508"),
    ]
    t = 9.47
    for gpu in profile["gpus"]:
        bus = gpu["pci_bus_id"][4:].lower()
        lines.append((t, f"nvidia {bus}: enabling device (0000 -> 0002)"))
        t += 0.0213
    lines += [
        (t + 0.01, f"NVRM: loading NVIDIA UNIX Open Kernel Module for x86_64  {driver}  Release "
                   "Build  (dvs-builder@U16-I1-N08-12-1)  Wed Apr 30 09:23:52 UTC 2025"),
        (t + 0.09, "nvidia-modeset: Loading NVIDIA UNIX Open Kernel Mode Setting Driver for "
                   f"x86_64  {driver}  Release Build  (dvs-builder@U16-I1-N08-12-1)  Wed Apr 30 "
                   "09:05:31 UTC 2025"),
        (t + 0.11, "[drm] [nvidia-drm] [GPU ID 0x00001900] Loading driver"),
    ]
    if profile["nvswitches"]:
        lines.append((t + 6.2, "nvidia-nvswitch: Probing device 0000:05:00.0, Vendor Id = "
                               "0x10de, Device Id = 0x22a3, Class = 0x068000"))
    return [[round(ts, 6), line] for ts, line in lines]


def _apply_flashed(directory: Path, profile: dict[str, Any]) -> list[str]:
    """Activate the images the node's tools left in flash/, as a card does at reset (all but
    a BMC image, which its BMC's restart activates)."""
    notes = []
    flash = directory / "flash"
    for blob in sorted(flash.glob("*.bin")) if flash.exists() else []:
        header = read_blob_header(blob.read_bytes()[:1024])
        target = blob.name.split("--", 1)[0] if "--" in blob.name else None
        if header is not None and header[0] == "bmc":
            # A BMC image runs when the BMC restarts (Manager.Reset, lab/bmc/firmware.py),
            # not when the host resets: it stays staged.
            continue
        if header is None or header[1] not in KNOWN_FIRMWARE.get(header[0], []):
            notes.append(f"{blob.name}: rejected (not a valid image)")
        elif header[0] == "connectx7":
            for hca in profile["hcas"]:
                if target in (None, hca["name"]):
                    hca["fw_version"] = header[1]
        elif header[0] == "gpu-vbios":
            for gpu in profile["gpus"]:
                gpu["vbios_version"] = header[1]
        else:
            profile["firmware"][header[0]] = header[1]
        blob.unlink()
    notes += _apply_bios_settings(flash, profile)
    # What `mlxfwreset` made current since the last boot, then what is still pending: a boot
    # resets every card, so both are current now.
    for name in (MLXCONFIG_ACTIVE, MLXCONFIG_PENDING):
        spool = flash / name
        if spool.exists():
            settings = read_json(spool)
            for hca in profile["hcas"]:
                hca["mlxconfig"].update(settings.get(hca["name"], {}))
            spool.unlink()
    return notes


def _apply_bios_settings(flash: Path, profile: dict[str, Any]) -> list[str]:
    """BIOS settings the BMC accepted since the last boot (a Bios/Settings PATCH, staged by
    lab/bmc/bios.py) become the setup in effect, as a BIOS applies them at POST."""
    pending = flash / BIOS_PENDING
    if not pending.exists():
        return []
    # Moved aside first: a PATCH arriving during this boot is kept for the next one.
    applying = pending.with_name(pending.name + ".applying")
    pending.replace(applying)
    try:
        settings = read_json(applying)
    except ValueError:
        settings = None
    applying.unlink()
    if not isinstance(settings, dict):
        return [f"{BIOS_PENDING}: rejected (not a JSON object of BIOS attributes)"]
    profile.setdefault("bios_attributes", dict(BIOS_ATTRIBUTES)).update(settings)
    return []


def on_node_boot(lab_dir: Path, node_name: str, rootfs: Path) -> None:
    """Record what is true at this boot in hw/<node>/boot.json.

    The driver version installed in the root filesystem becomes the loaded module; images
    flashed since the last boot are checked and become the running firmware; the
    `boot-fail` fault raises NodeBootFailed for image boots after its first `first_ok`.
    """
    directory = hw_path(lab_dir, node_name)
    profile_path = directory / "profile.json"
    if not profile_path.exists():
        raise FileNotFoundError(f"{profile_path}: prepare_node_hardware was not run")
    profile = read_json(profile_path)
    previous = read_json(directory / "boot.json") if (directory / "boot.json").exists() else {}
    rootfs = Path(rootfs)
    marker = rootfs / IMAGE_MARKER
    fresh_image = not marker.exists()
    image_boots = previous.get("image_boots", 0) + (1 if fresh_image else 0)
    for fault in _read_faults(directory):
        if fault["kind"] == "boot-fail" and fresh_image and image_boots > fault["first_ok"]:
            write_json(directory / "boot.json", {**previous, "image_boots": image_boots,
                                                 "failed": True, "driver": None,
                                                 "boot_log": []})
            raise NodeBootFailed(f"{node_name}: does not boot after imaging (fault boot-fail; "
                                 f"image boot {image_boots})")
    notes = _apply_flashed(directory, profile)
    refresh_boot_log(profile)
    write_json(profile_path, profile)
    driver = None
    version_file = rootfs / DRIVER_VERSION_PATH
    if version_file.exists() and profile["gpus"]:
        driver = version_file.read_text(encoding="utf-8").strip() or None
    kernel = booted_kernel(rootfs)
    release = directory / KERNEL_RELEASE_PATH
    release.parent.mkdir(parents=True, exist_ok=True)
    release.write_text(kernel + "\n", encoding="utf-8")
    boot = {
        "boot": previous.get("boot", 0) + 1,
        "kernel": kernel,
        "image_boots": image_boots,
        "driver": driver,
        "boot_log": _driver_log(driver, profile) if driver else [],
        "flash_notes": notes,
        "booted_at": time.time(),
    }
    write_json(directory / "boot.json", boot)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"{boot['boot']}\n", encoding="utf-8")
    refresh_sysfs(lab_dir, node_name)


def apply_fault(lab_dir: Path, node: str, kind: str, args: dict[str, Any]) -> dict[str, Any]:
    """Add a fault to a running node (takes effect at the tools' next invocation)."""
    directory = hw_path(lab_dir, node)
    profile_path = directory / "profile.json"
    if not profile_path.exists():
        raise FaultError(f"node {node!r}: no hardware at {directory} (is it a lab node?)")
    where = f"kiln lab fault {node} {kind}"
    fault = validate_fault({"kind": kind, **args}, where, with_node=False)
    profile = read_json(profile_path)
    check_against_profile(fault, profile, where)
    if kind == "firmware-version":
        apply_firmware_fault(profile, fault)
        write_json(profile_path, profile)
    faults = _read_faults(directory)
    faults.append(fault)
    write_json(directory / "faults.json", {"faults": faults})
    refresh_sysfs(lab_dir, node)
    return fault


def clear_faults(lab_dir: Path, node: str, kind: str | None = None) -> int:
    """Remove a node's faults (of one kind, or all); returns how many were removed."""
    directory = hw_path(lab_dir, node)
    faults = _read_faults(directory)
    keep = [f for f in faults if kind is not None and f["kind"] != kind]
    write_json(directory / "faults.json", {"faults": keep})
    if (directory / "profile.json").exists():
        refresh_sysfs(lab_dir, node)
    return len(faults) - len(keep)


def _parse_args(pairs: list[str]) -> dict[str, Any]:
    args = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not re.fullmatch(r"[a-z_]+", key):
            raise FaultError(f"argument {pair!r}: expected FIELD=VALUE, e.g. gpu=2")
        args[key] = value
    return args


USAGE = """usage: kiln lab fault NODE KIND [FIELD=VALUE ...]
       kiln lab fault NODE --clear [KIND]
       kiln lab fault --list

fault kinds:
"""


def fault_command(argv: list[str]) -> int:
    """`kiln lab fault …`: the lab CLI dispatches here."""
    lab_dir = Path(os.environ.get(LAB_DIR_ENV, DEFAULT_LAB_DIR))
    if not argv or argv[0] in ("-h", "--help", "--list"):
        text = USAGE + "".join(f"  {kind:22} {doc}\n" for kind, (_, doc) in KINDS.items())
        print(text, end="", file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if len(argv) < 2:
        print("kiln lab fault: name a NODE and a KIND (see kiln lab fault --list)",
              file=sys.stderr)
        return 2
    node = argv[0]
    try:
        if argv[1] == "--clear":
            removed = clear_faults(lab_dir, node, argv[2] if len(argv) > 2 else None)
            print(f"{node}: cleared {removed} fault(s)")
            return 0
        fault = apply_fault(lab_dir, node, argv[1], _parse_args(argv[2:]))
    except FaultError as exc:
        print(f"kiln lab fault: {exc}", file=sys.stderr)
        return 2
    shown = ", ".join(f"{k}={v}" for k, v in fault.items() if k != "kind" and v is not None)
    print(f"{node}: fault {fault['kind']} active ({shown})")
    return 0

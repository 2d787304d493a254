"""What a lab BMC knows about its node's firmware: versions running, images it accepts.

A real BMC reads the running BIOS and BMC versions from the flash parts and accepts an update
image only when its signature checks out. The lab's equivalents:

- the running versions are the node's hardware profile (`<lab>/hw/<node>/profile.json`,
  `firmware: {bios, bmc}`; schema in lab/hwsim/profile.py);
- an image is genuine when it carries a lab image header (lab/hwsim/blobs.py) naming a
  release of that component (`KNOWN_FIRMWARE`) and its bytes are that release's image (its
  sha256 is the released image's, lab/firmware_blobs.py);
- an accepted image is written to the node's flash spool (`<lab>/hw/<node>/flash/`), where
  the lab activates it at the node's next reset (lab/hwsim/lab_hooks.py `_apply_flashed`),
  the same spool the in-node flashing tools use; a staged BMC image is activated by the
  BMC's own restart (Manager.Reset, `activate_staged_bmc`), as a real BMC boots its new
  image.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from kiln.lab.firmware_blobs import blob_bytes, blob_sha256
from kiln.lab.hwsim.blobs import read_blob_header
from kiln.lab.hwsim.profile import KNOWN_FIRMWARE, write_json

# Firmware a lab BMC updates itself (host NIC and GPU firmware go through in-band tools).
UPDATABLE = ("bios", "bmc")
# Redfish names: the FirmwareInventory member Id and the key sushy-tools' drivers use.
INVENTORY_IDS = {"bios": "BIOS", "bmc": "BMC"}
VERSION_KEYS = {"bios": "BiosVersion", "bmc": "BmcVersion"}
# A staged image's file in the spool; one per component (a second update replaces it).
STAGED_PREFIX = "bmc-update-"


class FirmwareError(Exception):
    """The node's firmware cannot be read or changed as asked (message names node and file)."""


class ImageRejected(FirmwareError):
    """An update image that is not a genuine image of a release this system accepts."""


def profile_path(lab: Path, node: str) -> Path:
    return Path(lab) / "hw" / node / "profile.json"


def spool_path(lab: Path, node: str) -> Path:
    return Path(lab) / "hw" / node / "flash"


def running_versions(lab: Path, node: str) -> dict[str, str]:
    """{"bios": ..., "bmc": ...}: what the node's flash holds and runs now."""
    path = profile_path(lab, node)
    try:
        firmware = json.loads(path.read_text(encoding="utf-8"))["firmware"]
        return {component: str(firmware[component]) for component in UPDATABLE}
    except FileNotFoundError:
        raise FirmwareError(f"node {node}: no hardware profile at {path}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise FirmwareError(f"{path}: no firmware.bios/firmware.bmc versions ({exc})") from None


def identify_image(data: bytes, source: str) -> tuple[str, str]:
    """(component, version) of a genuine BIOS or BMC image; ImageRejected says why not."""
    header = read_blob_header(data)
    if header is None:
        raise ImageRejected(f"{source}: not a firmware image for this system (no image header)")
    component, version = header
    if component not in UPDATABLE:
        raise ImageRejected(
            f"{source}: a {component} image; this BMC updates {' and '.join(UPDATABLE)} only"
        )
    known = KNOWN_FIRMWARE.get(component, [])
    if version not in known:
        raise ImageRejected(
            f"{source}: {component} {version} is not a release for this system "
            f"(releases: {', '.join(known)})"
        )
    digest = hashlib.sha256(data).hexdigest()
    if digest != blob_sha256(component, version):
        raise ImageRejected(
            f"{source}: image verification failed: sha256 {digest} is not the sha256 of the "
            f"released {component} {version} image"
        )
    return component, version


def staged_image_path(lab: Path, node: str, component: str) -> Path:
    return spool_path(lab, node) / f"{STAGED_PREFIX}{component}.bin"


def stage_image(lab: Path, node: str, component: str, data: bytes) -> Path:
    """Write a checked image to the node's flash spool; it becomes active at the next reset."""
    if component not in UPDATABLE:
        raise FirmwareError(f"node {node}: {component} firmware is not updated by the BMC")
    spool = spool_path(lab, node)
    if not spool.is_dir():
        raise FirmwareError(f"node {node}: no flash spool at {spool}")
    target = staged_image_path(lab, node, component)
    partial = target.with_name(target.name + ".partial")
    partial.write_bytes(data)
    partial.replace(target)  # the lab never sees half an image at a reset
    return target


def stage_version(lab: Path, node: str, component: str, version: str) -> Path:
    """Stage the released image of `component` `version` (what a vendor update would flash)."""
    if version not in KNOWN_FIRMWARE.get(component, []):
        known = ", ".join(KNOWN_FIRMWARE.get(component, [])) or "none"
        raise FirmwareError(
            f"node {node}: {component} {version} is not a release for this system "
            f"(releases: {known})"
        )
    return stage_image(lab, node, component, blob_bytes(component, version))


def staged_versions(lab: Path, node: str) -> dict[str, str]:
    """Images waiting in the spool for the next reset, by component."""
    staged = {}
    for component in UPDATABLE:
        path = staged_image_path(lab, node, component)
        if path.exists():
            header = read_blob_header(path.read_bytes()[:1024])
            if header is not None:
                staged[component] = header[1]
    return staged


def activate_staged_bmc(lab: Path, node: str) -> str | None:
    """At the BMC's restart: a staged BMC image becomes the running BMC version (and leaves
    the spool); BIOS and NIC images stay staged for the system's reset. The BMC version
    now running, or None when no BMC image was staged."""
    path = staged_image_path(lab, node, "bmc")
    if not path.exists():
        return None
    data = path.read_bytes()
    try:
        component, version = identify_image(data, str(path))
    except ImageRejected:
        path.unlink()  # a BMC boots its old image when the new one does not verify
        raise
    if component != "bmc":
        raise FirmwareError(f"node {node}: {path} holds a {component} image, not a BMC image")
    profile_file = profile_path(lab, node)
    try:
        profile = json.loads(profile_file.read_text(encoding="utf-8"))
        profile["firmware"]["bmc"] = version
    except FileNotFoundError:
        raise FirmwareError(f"node {node}: no hardware profile at {profile_file}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise FirmwareError(f"{profile_file}: no firmware.bmc version ({exc})") from None
    write_json(profile_file, profile)
    path.unlink()
    return version

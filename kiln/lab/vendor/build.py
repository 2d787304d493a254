"""Build `<lab>/vendor/`: the vendor apt repository, the OS mirror, the firmware blobs.

    vendor/apt/        simulated NVIDIA/Mellanox packages (catalogue.vendor_packages())
    vendor/os/         Debian packages nodes may install (catalogue.OS_PACKAGES + closure)
    vendor/firmware/   lab firmware images + SHA256SUMS
    vendor/keys/lab-archive.asc   the public key both repositories are signed with

Private build state (the signing key's gnupg home, per-package input digests, the OS
mirror's apt state and download cache) lives beside it in `<lab>/vendor-build/`, never in the
served tree. Every step compares what it would write with what is there, so a second build
with nothing changed writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from .. import firmware_blobs
from . import archive, debs, os_mirror, signing
from .catalogue import FIRMWARE_VERSIONS, OS_PACKAGES, OS_SUITE, VENDOR_SUITE, vendor_packages

KEY_FILE = "keys/lab-archive.asc"


def native_architecture() -> str:
    return subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
    ).stdout.strip()


def build_repository(
    lab_dir: Path,
    os_packages: Sequence[str] | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> None:
    """Build or update `lab_dir/vendor` (idempotent; rebuilds only what changed).

    `os_packages` overrides catalogue.OS_PACKAGES (tests pass a short list, or () for an
    empty but valid and signed `os/` repository that needs no network).
    """
    lab_dir = Path(lab_dir)
    vendor = lab_dir / "vendor"
    private = lab_dir / "vendor-build"
    vendor.mkdir(parents=True, exist_ok=True)
    private.mkdir(parents=True, exist_ok=True)
    # apt's download sandbox user (_apt) must reach os-apt/*/partial; the key's own
    # gnupg home is 0700.
    private.chmod(0o755)
    arch = native_architecture()
    with signing.gnupg_home(private / "gnupg") as gnupg:
        fingerprint = signing.ensure_key(gnupg)
        _write_if_changed(vendor / KEY_FILE, signing.export_public(gnupg, fingerprint).encode())
        built = _build_vendor_debs(vendor / "apt", private / "debs.json", arch)
        if built:
            log(f"kiln lab: built {built} vendor package(s)")
        if archive.index(vendor / "apt", VENDOR_SUITE, arch, "kiln lab vendor", gnupg, fingerprint):
            log("kiln lab: indexed and signed the vendor repository")
        packages = OS_PACKAGES if os_packages is None else tuple(os_packages)
        if os_mirror.fetch(lab_dir, vendor / "os", packages, arch):
            log("kiln lab: fetched Debian packages for the os/ repository")
        if archive.index(vendor / "os", OS_SUITE, arch, "kiln lab os mirror", gnupg, fingerprint):
            log("kiln lab: indexed and signed the os/ repository")
    _write_firmware(vendor / "firmware")


def _build_vendor_debs(repo: Path, digests_file: Path, arch: str) -> int:
    recorded: dict[str, str] = {}
    if digests_file.exists():
        recorded = json.loads(digests_file.read_text())
    current: dict[str, str] = {}
    built = 0
    for package in vendor_packages():
        relative = debs.pool_path(package, arch)
        digest = debs.inputs_digest(package, arch)
        current[relative] = digest
        if recorded.get(relative) == digest and (repo / relative).exists():
            continue
        debs.build_deb(package, arch, repo / relative)
        built += 1
        # Record as we go: an interrupted build keeps what it finished.
        digests_file.write_text(json.dumps({**recorded, **current}, indent=1, sort_keys=True))
    # Packages dropped from the catalogue leave the repository.
    pool = repo / "pool"
    for deb in pool.rglob("*.deb") if pool.exists() else []:
        if deb.relative_to(repo).as_posix() not in current:
            deb.unlink()
            built += 1
    if recorded != current:
        digests_file.write_text(json.dumps(current, indent=1, sort_keys=True))
    return built


def _write_firmware(directory: Path) -> None:
    sums = []
    for component, versions in FIRMWARE_VERSIONS.items():
        for version in versions:
            name = firmware_blobs.blob_file_name(component, version)
            data = firmware_blobs.blob_bytes(component, version)
            _write_if_changed(directory / name, data)
            sums.append(f"{hashlib.sha256(data).hexdigest()}  {name}\n")
    _write_if_changed(directory / "SHA256SUMS", "".join(sorted(sums, key=_by_name)).encode())


def _by_name(line: str) -> str:
    return line.split("  ", 1)[1]


def _write_if_changed(path: Path, data: bytes) -> bool:
    if path.exists() and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    partial.replace(path)
    return True

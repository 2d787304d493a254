"""Mirror the Debian packages nodes may install into the lab's `os/` repository.

Nodes have no route out of the lab, as at an air-gapped site; so the host fetches, once,
the packages named in catalogue.OS_PACKAGES plus their dependency closure, with apt itself:
`apt-get install --download-only` in a throwaway apt state (its own lists, cache and dpkg
status under `<lab>/vendor-build/os-apt/`), using the host's configured Debian sources. The
host's own apt state and installed packages are not touched.

The dpkg status apt resolves against is the node base image's (`<lab>/base/var/lib/dpkg/
status`) when it exists: the mirror then holds exactly what a node lacks. Without a base, an
empty status makes apt fetch the full closure. The downloaded .debs stay in the cache, so a
rebuild downloads only what is new.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from .catalogue import COMPONENT


def _apt_options(state: Path, status: Path, arch: str) -> list[str]:
    options = {
        "Dir::State": state / "state",
        "Dir::State::Lists": state / "lists",
        "Dir::State::status": status,
        "Dir::Cache": state / "cache",
        "Dir::Cache::archives": state / "archives",
        "Debug::NoLocking": "true",
        "APT::Architecture": arch,
        "APT::Architectures": arch,
        "APT::Install-Recommends": "false",
        "APT::Get::Assume-Yes": "true",
        # The status may be a foreign one (the base's): never run dpkg or its hooks here.
        "APT::Get::Download-Only": "true",
    }
    args = []
    for key, value in options.items():
        args += ["-o", f"{key}={value}"]
    return args


def _status_file(lab_dir: Path, state: Path) -> Path:
    base_status = lab_dir / "base" / "var/lib/dpkg/status"
    if base_status.exists():
        return base_status
    empty = state / "empty-status"
    if not empty.exists():
        empty.touch()
    return empty


def _digest(packages: Sequence[str], status: Path, arch: str) -> str:
    digest = hashlib.sha256(json.dumps([sorted(packages), arch]).encode())
    digest.update(status.read_bytes())
    return digest.hexdigest()


def _apt_get(args: list[str], what: str) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    result = subprocess.run(["apt-get", *args], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(
            f"apt-get {what} for the lab's os/ repository failed "
            f"(exit {result.returncode}): {result.stderr.strip() or result.stdout[-2000:]}"
        )


def fetch(lab_dir: Path, repo: Path, packages: Sequence[str], arch: str) -> bool:
    """Bring `repo/pool/main/` up to date with `packages`' closure; True if it changed."""
    state = lab_dir / "vendor-build" / "os-apt"
    for sub in ("state", "lists/partial", "cache", "archives/partial"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    pool = repo / "pool" / COMPONENT
    pool.mkdir(parents=True, exist_ok=True)
    status = _status_file(lab_dir, state)
    stamp = state / "fetched.json"
    digest = _digest(packages, status, arch)
    if stamp.exists() and json.loads(stamp.read_text()).get("digest") == digest:
        return False
    if packages:
        options = _apt_options(state, status, arch)
        _apt_get([*options, "update"], "update")
        _apt_get([*options, "install", *packages], "install --download-only")
    changed = False
    for deb in (state / "archives").glob("*.deb"):
        target = pool / deb.name
        if not target.exists():
            _link_or_copy(deb, target)
            changed = True
    # apt's cache keeps older downloads; the repository holds what the last resolution chose
    # plus what was already there (nodes may have been installed from it).
    stamp.write_text(json.dumps({"digest": digest, "packages": sorted(packages)}) + "\n")
    return changed


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)

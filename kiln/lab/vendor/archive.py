"""Index a pool of .debs as an apt repository with apt-ftparchive, and sign it.

Layout (both `apt/` and `os/`): `pool/main/…/*.deb` and `dists/<suite>/main/binary-<arch>/`
with Packages, Packages.gz and Release/InRelease/Release.gpg, so a node's source line is

    deb [signed-by=/etc/apt/keyrings/kiln-lab.asc] http://10.231.0.1:8081/apt kilnlab main
"""

from __future__ import annotations

import gzip
import subprocess
from pathlib import Path

from . import signing
from .catalogue import COMPONENT


def _run(args: list[str], cwd: Path) -> str:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed in {cwd}: {result.stderr.strip()}")
    return result.stdout


def packages_index(repo: Path, arch: str) -> str:
    """The Packages file for `arch`, stanzas sorted so the same pool gives the same text."""
    (repo / "pool" / COMPONENT).mkdir(parents=True, exist_ok=True)
    text = _run(["apt-ftparchive", "--arch", arch, "packages", f"pool/{COMPONENT}"], repo)
    stanzas = [stanza.strip("\n") for stanza in text.split("\n\n") if stanza.strip()]
    return "".join(f"{stanza}\n\n" for stanza in sorted(stanzas))


def index(
    repo: Path, suite: str, arch: str, label: str, gnupg: Path, fingerprint: str
) -> bool:
    """(Re)write the index and signatures when the pool or key changed; True if it did."""
    dist = repo / "dists" / suite
    binary = dist / COMPONENT / f"binary-{arch}"
    release = dist / "Release"
    packages = packages_index(repo, arch)
    current = binary / "Packages"
    if (
        current.exists()
        and current.read_text() == packages
        and release.exists()
        and signing.signed_by(gnupg, fingerprint, release)
    ):
        return False
    binary.mkdir(parents=True, exist_ok=True)
    current.write_text(packages)
    # mtime=0: the same Packages gives the same .gz bytes.
    with open(binary / "Packages.gz", "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as compressed:
            compressed.write(packages.encode())
    options = {
        "Origin": "kiln-lab",
        "Label": label,
        "Suite": suite,
        "Codename": suite,
        "Architectures": arch,
        "Components": COMPONENT,
        "Description": f"{label} (kiln lab)",
    }
    args = ["apt-ftparchive"]
    for key, value in options.items():
        args += ["-o", f"APT::FTPArchive::Release::{key}={value}"]
    # Index files only: apt-ftparchive would otherwise list an old Release/InRelease too.
    text = _run([*args, "release", f"dists/{suite}/{COMPONENT}"], repo)
    release_text = _rebase_release(text, COMPONENT)
    release.write_text(release_text)
    signing.sign_release(gnupg, fingerprint, release)
    return True


def _rebase_release(text: str, component: str) -> str:
    """apt-ftparchive names files relative to the directory it was given; apt wants them
    relative to dists/<suite>/, so prefix the component."""
    lines = []
    for line in text.splitlines():
        parts = line.split()
        if line.startswith(" ") and len(parts) == 3:
            line = f" {parts[0]} {parts[1]:>16} {component}/{parts[2]}"
        lines.append(line)
    return "\n".join(lines) + "\n"

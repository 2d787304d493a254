"""The lab's archive signing key: one per lab, made once with gpg, never served.

The secret key lives in `<lab>/vendor-build/gnupg/` (outside the served `vendor/` tree); the
public half is exported to `vendor/keys/lab-archive.asc`, which nodes use as apt's
`signed-by` keyring.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

KEY_UID = "kiln lab archive signing key (simulated vendor repository) <archive@kiln.invalid>"


class SigningError(RuntimeError):
    pass


def _gpg(home: Path, *args: str, input_text: str | None = None) -> str:
    result = subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--no-tty", "--quiet", *args],
        capture_output=True,
        text=True,
        input=input_text,
    )
    if result.returncode != 0:
        raise SigningError(f"gpg {' '.join(args)} failed in {home}: {result.stderr.strip()}")
    return result.stdout


@contextmanager
def gnupg_home(home: Path) -> Iterator[Path]:
    """The gnupg home to pass to gpg while signing: a short symlink to `home`.

    gpg-agent's socket lives in the home (no /run/user/<uid> here), and a Unix socket path
    must fit in 107 bytes, which a deep lab directory (pytest's, for one) does not. The
    agent gpg starts is stopped on the way out: it must not outlive the build.
    """
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o700)
    link_dir = Path(tempfile.mkdtemp(prefix="kiln-gpg-"))
    link = link_dir / "h"
    link.symlink_to(home.resolve())
    try:
        yield link
    finally:
        subprocess.run(
            ["gpgconf", "--homedir", str(link), "--kill", "gpg-agent"], capture_output=True
        )
        shutil.rmtree(link_dir)


def ensure_key(home: Path) -> str:
    """Fingerprint of the lab's signing key, generating it (no passphrase) on first use."""
    fingerprint = _secret_fingerprint(home)
    if fingerprint:
        return fingerprint
    _gpg(home, "--passphrase", "", "--quick-gen-key", KEY_UID, "ed25519", "sign", "never")
    fingerprint = _secret_fingerprint(home)
    if not fingerprint:
        raise SigningError(f"gpg made no secret key in {home}")
    return fingerprint


def _secret_fingerprint(home: Path) -> str | None:
    listing = _gpg(home, "--with-colons", "--list-secret-keys")
    lines = listing.splitlines()
    for index, line in enumerate(lines):
        if line.startswith("sec:"):
            for following in lines[index + 1 :]:
                if following.startswith("fpr:"):
                    return following.split(":")[9]
    return None


def export_public(home: Path, fingerprint: str) -> str:
    return _gpg(home, "--armor", "--export", fingerprint)


def sign_release(home: Path, fingerprint: str, release: Path) -> None:
    """Write InRelease (clearsigned) and Release.gpg (detached) beside `release`."""
    for name, mode in (("InRelease", "--clearsign"), ("Release.gpg", "--detach-sign")):
        target = release.with_name(name)
        partial = release.with_name(name + ".partial")
        _gpg(
            home, "--yes", "--armor", "--digest-algo", "SHA512", "--local-user", fingerprint,
            mode, "--output", str(partial), str(release),
        )
        partial.replace(target)


def signed_by(home: Path, fingerprint: str, release: Path) -> bool:
    """Whether InRelease and Release.gpg beside `release` are good signatures by the key."""
    inrelease = release.with_name("InRelease")
    detached = release.with_name("Release.gpg")
    if not (inrelease.exists() and detached.exists()):
        return False
    for args in ((str(inrelease),), (str(detached), str(release))):
        result = subprocess.run(
            ["gpg", "--homedir", str(home), "--batch", "--status-fd", "1", "--verify", *args],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0 or f"VALIDSIG {fingerprint}" not in result.stdout:
            return False
    # The clearsigned text must be the Release we have now, not an older one.
    clear = subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--quiet", "--decrypt", str(inrelease)],
        capture_output=True,
    )
    return clear.returncode == 0 and clear.stdout.rstrip(b"\n") == release.read_bytes().rstrip(
        b"\n"
    )

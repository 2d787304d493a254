"""The cluster's mirror signing key: made once by kiln, kept on the controller.

The key (ed25519, signing only, no passphrase: kiln signs unattended) lives in a gnupg home
under `<kiln_mirror_state>/gnupg/` (0700), beside the controller's other state. Only the
public half goes to nodes. Signing happens here because a Release file is a few hundred
bytes: sending it to the key costs nothing, while a signing key on the service node would
let anyone who takes that one machine sign packages every node installs as root.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kiln.core.errors import KilnError

KEY_UID = "kiln mirror signing key <mirror@kiln.invalid>"
PUBLIC_KEY = "mirror-key.asc"
# One gpg session at a time: they share the home's agent socket (pyinfra prepares hosts
# concurrently; with its gevent patching this lock is a cooperative one).
_SESSION = threading.RLock()


class SigningError(KilnError):
    pass


class MirrorKey:
    """The gnupg home holding the key; `with key.session():` around gpg work."""

    def __init__(self, state: Path):
        self.state = Path(state)
        self.home = self.state / "gnupg"
        self._link: Path | None = None

    @contextmanager
    def session(self) -> Iterator[MirrorKey]:
        """gpg-agent keeps its socket in the home, and a socket path must fit in 107 bytes:
        gpg is given a short symlink to the home; the agent is stopped on the way out."""
        with _SESSION:
            self.home.mkdir(parents=True, exist_ok=True)
            self.home.chmod(0o700)
            link_dir = Path(tempfile.mkdtemp(prefix="kiln-mirror-gpg-"))
            self._link = link_dir / "h"
            self._link.symlink_to(self.home.resolve())
            try:
                yield self
            finally:
                subprocess.run(["gpgconf", "--homedir", str(self._link), "--kill", "gpg-agent"],
                               capture_output=True)
                shutil.rmtree(link_dir, ignore_errors=True)
                self._link = None

    def _gpg(self, *args: str, stdin: bytes | None = None, check: bool = True) -> bytes:
        home = str(self._link or self.home)
        result = subprocess.run(
            ["gpg", "--homedir", home, "--batch", "--no-tty", "--quiet", *args],
            capture_output=True, input=stdin,
        )
        if check and result.returncode != 0:
            raise SigningError(
                f"gpg {args[0]} in {self.home}: {result.stderr.decode(errors='replace').strip()}"
            )
        return result.stdout

    def fingerprint(self) -> str | None:
        listing = self._gpg("--with-colons", "--list-secret-keys", check=False).decode()
        seen_secret = False
        for line in listing.splitlines():
            if line.startswith("sec:"):
                seen_secret = True
            elif seen_secret and line.startswith("fpr:"):
                return line.split(":")[9]
        return None

    def ensure(self) -> tuple[str, bool]:
        """(fingerprint, made now?): the key is generated the first time only."""
        found = self.fingerprint()
        if found:
            return found, False
        self._gpg("--passphrase", "", "--quick-gen-key", KEY_UID, "ed25519", "sign", "never")
        found = self.fingerprint()
        if not found:
            raise SigningError(f"gpg made no secret key in {self.home}")
        return found, True

    def public_armor(self, fingerprint: str) -> str:
        text = self._gpg("--armor", "--export", fingerprint).decode()
        (self.state / PUBLIC_KEY).write_text(text)
        return text

    def sign(self, fingerprint: str, release: bytes) -> tuple[bytes, bytes]:
        """(InRelease, Release.gpg) for `release`."""
        common = ("--armor", "--digest-algo", "SHA512", "--local-user", fingerprint)
        inrelease = self._gpg(*common, "--clearsign", stdin=release)
        detached = self._gpg(*common, "--detach-sign", stdin=release)
        return inrelease, detached

    def verifies(self, fingerprint: str, release: bytes, inrelease: bytes | None,
                 detached: bytes | None) -> bool:
        """Whether both signatures are this key's, over exactly `release`."""
        if not inrelease or not detached:
            return False
        with tempfile.TemporaryDirectory(prefix="kiln-mirror-verify-") as tmp:
            paths = {name: Path(tmp) / name for name in ("Release", "InRelease", "Release.gpg")}
            paths["Release"].write_bytes(release)
            paths["InRelease"].write_bytes(inrelease)
            paths["Release.gpg"].write_bytes(detached)
            for args in ((str(paths["InRelease"]),),
                         (str(paths["Release.gpg"]), str(paths["Release"]))):
                result = subprocess.run(
                    ["gpg", "--homedir", str(self._link or self.home), "--batch",
                     "--status-fd", "1", "--verify", *args],
                    capture_output=True,
                )
                valid = f"VALIDSIG {fingerprint}".encode() in result.stdout
                if result.returncode != 0 or not valid:
                    return False
            clear = self._gpg("--decrypt", str(paths["InRelease"]), check=False)
        return clear.rstrip(b"\n") == release.rstrip(b"\n")

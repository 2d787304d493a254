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

    def existing_fingerprint(self) -> str:
        """The key's fingerprint; an error naming `kiln mirror init-key` when there is none
        (signing never makes a key of its own: making one is an explicit step)."""
        found = self.fingerprint()
        if not found:
            raise SigningError(missing_key_message(self.state))
        return found

    def sign(self, fingerprint: str, release: bytes) -> tuple[bytes, bytes]:
        """(InRelease, Release.gpg) for `release`."""
        common = ("--armor", "--digest-algo", "SHA512", "--local-user", fingerprint)
        inrelease = self._gpg(*common, "--clearsign", stdin=release)
        detached = self._gpg(*common, "--detach-sign", stdin=release)
        return inrelease, detached


def release_signed_by(public: str, release: bytes, inrelease: bytes | None,
                      detached: bytes | None) -> bool:
    """Whether both signatures are by the key whose armored public half is `public`, over
    exactly `release`. Checked in a throwaway gnupg home holding only that public key: a
    preview reads the mirror's signatures without touching the key's own home."""
    if not inrelease or not detached:
        return False
    with tempfile.TemporaryDirectory(prefix="kiln-mirror-verify-") as tmp:
        home = Path(tmp) / "h"
        home.mkdir(mode=0o700)
        gpg = ["gpg", "--homedir", str(home), "--batch", "--no-tty", "--quiet"]
        try:
            subprocess.run([*gpg, "--import"], input=public.encode(), capture_output=True,
                           check=True)
            listing = subprocess.run([*gpg, "--with-colons", "--list-keys"],
                                     capture_output=True, check=True).stdout.decode()
            fingerprints = [line.split(":")[9] for line in listing.splitlines()
                            if line.startswith("fpr:")]
            paths = {name: Path(tmp) / name for name in ("Release", "InRelease", "Release.gpg")}
            paths["Release"].write_bytes(release)
            paths["InRelease"].write_bytes(inrelease)
            paths["Release.gpg"].write_bytes(detached)
            for args in ((str(paths["InRelease"]),),
                         (str(paths["Release.gpg"]), str(paths["Release"]))):
                result = subprocess.run([*gpg, "--status-fd", "1", "--verify", *args],
                                        capture_output=True)
                if result.returncode != 0 or not fingerprints or \
                        f"VALIDSIG {fingerprints[0]}".encode() not in result.stdout:
                    return False
            clear = subprocess.run([*gpg, "--decrypt", str(paths["InRelease"])],
                                   capture_output=True).stdout
        finally:
            subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"],
                           capture_output=True)
    return clear.rstrip(b"\n") == release.rstrip(b"\n")


def missing_key_message(state: Path) -> str:
    return (f"no mirror signing key in {state} (host data kiln_mirror_state): make it once "
            f"with `kiln mirror init-key --state {state}`")


def init_key(state: Path) -> tuple[str, bool]:
    """(fingerprint, made now?): the cluster's key, made the first time only, its public
    half exported beside it for kiln's runs to read."""
    key = MirrorKey(state)
    with key.session():
        fingerprint, made = key.ensure()
        key.public_armor(fingerprint)
    return fingerprint, made


def read_public_key(state: Path) -> str:
    """The armored public half `init_key` exported: a plain file read, so a run's planning
    and a preview read the key without running gpg (which writes into its home)."""
    try:
        return (Path(state) / PUBLIC_KEY).read_text()
    except FileNotFoundError:
        raise SigningError(missing_key_message(Path(state))) from None

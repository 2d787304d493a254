"""The burn-in's SSH key: how the multi-node runs reach their partners.

`mpirun` starts its daemons on the other nodes of a pair over SSH, from the first node of the
pair, as multi-node NCCL jobs do. kiln keeps one key pair for that on the controller
(`<kiln_burnin_state>/id_ed25519`, made once by `kiln burnin init-key`, 0600) and the
burn-in stage installs it on every GPU node (`/root/.ssh/kiln_burnin`, its public half in
root's authorized_keys). A run plans from the key it finds and never makes one while it
plans: without it the stage refuses, naming the command.
"""

from __future__ import annotations

import os
from pathlib import Path

from kiln.core.errors import KilnError

KEY_NAME = "id_ed25519"
COMMENT = "kiln-burnin"
NODE_KEY = "/root/.ssh/kiln_burnin"


def key_path(state: Path | str) -> Path:
    return Path(state) / KEY_NAME


def init_key(state: Path | str) -> tuple[Path, bool]:
    """Make the key pair in `state` unless it is there; (private key path, made now)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = key_path(state)
    if private.is_file() and private.with_suffix(".pub").is_file():
        return private, False
    private.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                            serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH)
    tmp = private.with_name(private.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    os.replace(tmp, private)
    private.with_suffix(".pub").write_text(public.decode() + f" {COMMENT}\n")
    return private, True


def read_key(state: Path | str) -> tuple[str, str]:
    """(private key text, public key line); a KilnError naming the command when absent."""
    private = key_path(state)
    try:
        mode = private.stat().st_mode & 0o777
        text, public = private.read_text(), private.with_suffix(".pub").read_text().strip()
    except OSError:
        raise KilnError(f"no burn-in SSH key in {private.parent} (host data kiln_burnin_state):"
                        f" make it once with `kiln burnin init-key --state {private.parent}`"
                        ) from None
    if mode & 0o077:
        raise KilnError(f"{private}: the burn-in key is readable by others (mode "
                        f"{mode:o}); chmod 600 it")
    return text, public


AUTHORIZED_KEYS = "/root/.ssh/authorized_keys"


def authorized_keys_text(current: str | None, public: str) -> str | None:
    """root's authorized_keys with the burn-in's public key on exactly one line, every other
    line kept in its order; None when it is so already. Compared as text, not as a pattern:
    a key's base64 holds '+' and '/', which grep would read as regex syntax."""
    public = public.strip()
    lines = (current or "").splitlines()
    if sum(1 for line in lines if line.strip() == public) == 1:
        return None
    kept = [line for line in lines if line.strip() != public]
    return "\n".join([*kept, public]) + "\n"

"""The lab's credentials: BMC, MAAS and UFM, random for each `kiln lab up`.

They are written where kiln reads credentials on a real cluster, a 0600 secrets file in
kiln's format (roles/secrets.py), `<lab>/secrets.yaml`:

    bmc: {username: ..., password: ...}          # every lab BMC (Redfish and IPMI)
    maas: {api_key: consumer_key:token_key:token_secret}
    ufm: {username: ..., password: ...}
    mirror: {username: ..., password: ...}        # uploads to the local file mirror

The simulators read the same file to check what clients send. Nothing else in the lab
(state.json, logs, `kiln lab status`) holds a credential.
"""

from __future__ import annotations

import os
import secrets
import string
from pathlib import Path

import yaml

SECRETS_FILE = "secrets.yaml"
_ALPHANUMERIC = string.ascii_letters + string.digits


def _token(length: int) -> str:
    return "".join(secrets.choice(_ALPHANUMERIC) for _ in range(length))


def new_lab_secrets() -> dict[str, dict[str, str]]:
    # MAAS's own key shape: an 18-character consumer key and token key, a 32-character secret.
    api_key = f"{_token(18)}:{_token(18)}:{_token(32)}"
    return {
        # IPMI 2.0 user names are at most 16 bytes, passwords at most 20.
        "bmc": {"username": f"kiln{_token(6).lower()}", "password": _token(20)},
        "maas": {"api_key": api_key},
        "ufm": {"username": "admin", "password": _token(20)},
        # Uploads to the local file mirror (roles/mirror: PUT/DELETE over TLS).
        "mirror": {"username": "kiln-upload", "password": _token(24)},
    }


def secrets_path(lab: Path) -> Path:
    return Path(lab) / SECRETS_FILE


def ensure_lab_secrets(lab: Path) -> Path:
    """Write fresh credentials for this lab (0600 from the first byte); return the path."""
    path = secrets_path(lab)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{SECRETS_FILE}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("# kiln lab credentials, new at every `kiln lab up` (roles/secrets.py format)\n")
        yaml.safe_dump(new_lab_secrets(), out, sort_keys=True)
    os.replace(tmp, path)
    return path


def read_lab_secrets(lab: Path) -> dict[str, dict[str, str]]:
    path = secrets_path(lab)
    try:
        document = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no lab credentials (is the lab up?)") from None
    if not isinstance(document, dict):
        raise ValueError(f"{path}: expected a mapping of credential entries")
    return {str(k): {str(f): str(v) for f, v in fields.items()} for k, fields in document.items()}

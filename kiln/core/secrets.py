"""Credentials for BMCs, MAAS and UFM: from the environment or a 0600 secrets file.

Never from the inventory or the manifests. Group data names where they come from:

    kiln_secrets_file = "/etc/kiln/secrets.yaml"   # optional; must be mode 0600
    kiln_secrets_env_prefix = "KILN_"              # KILN_BMC_USERNAME, KILN_MAAS_API_KEY …

The environment wins over the file. Values are wrapped in `Secret`, whose str/repr is
masked, so a credential that reaches a log line or a report prints as `********`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

from kiln.core.errors import KilnError
from kiln.core.yamlfile import read_yaml_mapping

MASK = "********"


class Secret:
    """A credential value that does not print itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK})"

    def __str__(self) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class MissingCredential(KilnError):
    pass


def check_secrets_file_mode(path: Path) -> None:
    """Refuse a secrets file that others can read: credentials must not leak through it."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KilnError(
            f"{path}: secrets file has mode {mode:04o}; it must be 0600 (chmod 600 {path})"
        )


def load_secrets_file(path: Path | str) -> dict[str, dict[str, str]]:
    """The file maps an entry name (bmc, maas, ufm, bmc-gpu-017 …) to its fields."""
    path = Path(path).expanduser()
    if not path.exists():
        raise KilnError(f"{path}: secrets file named in group data does not exist")
    check_secrets_file_mode(path)
    document = read_yaml_mapping(path)
    entries: dict[str, dict[str, str]] = {}
    for name, fields in document.items():
        if not isinstance(fields, dict):
            raise KilnError(f"{path}: {name}: expected a mapping of fields")
        entries[str(name)] = {str(key): str(value) for key, value in fields.items()}
    return entries


def env_name(prefix: str, entry: str, field: str) -> str:
    """KILN_ + BMC + _ + USERNAME; dashes in entry names become underscores."""
    return f"{prefix}{entry}_{field}".upper().replace("-", "_")


def lookup(
    entry: str,
    fields: tuple[str, ...],
    *,
    env: Mapping[str, str] | None = None,
    secrets_file: Path | str | None = None,
    env_prefix: str = "KILN_",
) -> dict[str, Secret]:
    """Every field of one credential entry, environment first, then the secrets file.

    The error names the entry and where it looked, never a value.
    """
    env = os.environ if env is None else env
    found: dict[str, Secret] = {}
    for field in fields:
        value = env.get(env_name(env_prefix, entry, field))
        if value:
            found[field] = Secret(value)
    missing = [field for field in fields if field not in found]
    if missing and secrets_file:
        from_file = load_secrets_file(secrets_file).get(entry, {})
        for field in missing:
            if from_file.get(field):
                found[field] = Secret(from_file[field])
    missing = [field for field in fields if field not in found]
    if missing:
        wanted = ", ".join(env_name(env_prefix, entry, field) for field in missing)
        where = f" or entry {entry!r} of {secrets_file}" if secrets_file else ""
        raise MissingCredential(f"no credentials for {entry!r}: set {wanted}{where}")
    return found

"""The user_data kiln deploys with: a cloud-config that lets kiln in and points apt at the
local mirror.

    #cloud-config
    ssh_authorized_keys: [<kiln's public key>]
    apt:
      sources:
        kiln-mirror-apt.list:
          source: deb [signed-by=$KEY_FILE] http://mirror/apt kilnlab main
          key: <the mirror's ASCII-armoured public key>

cloud-init's apt module writes each source with its key as a keyring and substitutes
`$KEY_FILE`, so the key only signs that source. The mirror is a parameter: in the lab, the
vendor repository (`lab_vendor_mirror`), on a cluster the mirror role's repository.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from kiln.core.errors import KilnError

_KEY_TYPES = re.compile(
    r"^(ssh-(ed25519|rsa|dss)|ecdsa-sha2-nistp(256|384|521)|sk-(ssh-ed25519|ecdsa-sha2-"
    r"nistp256)@openssh\.com) [A-Za-z0-9+/]+=*( .*)?$"
)
_ARMOURED_KEY = "-----BEGIN PGP PUBLIC KEY BLOCK-----"


@dataclass(frozen=True)
class AptSource:
    uri: str
    suite: str
    components: tuple[str, ...] = ("main",)


@dataclass(frozen=True)
class AptMirror:
    sources: tuple[AptSource, ...]
    key: str  # ASCII-armoured OpenPGP public key that signs every source
    name: str = "kiln-mirror"


def lab_vendor_mirror(base_url: str, key: str) -> AptMirror:
    """The lab's vendor repository (lab/README.md): `apt/ kilnlab main`, `os/ bookworm main`."""
    base = base_url if base_url.endswith("/") else base_url + "/"
    return AptMirror(
        sources=(AptSource(base + "apt", "kilnlab"), AptSource(base + "os", "bookworm")),
        key=key,
    )


def public_key_of(private_key: str | Path) -> str:
    """The OpenSSH public key beside a private key file (`<key>.pub`)."""
    path = Path(private_key).expanduser().with_name(Path(private_key).name + ".pub")
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        raise KilnError(f"{path}: no public key beside kiln's SSH key {private_key}") from None


def _check(ssh_authorized_keys: Sequence[str], mirror: AptMirror | None) -> None:
    if not ssh_authorized_keys:
        raise KilnError("user_data: no SSH key: kiln could not reach the deployed node")
    for number, key in enumerate(ssh_authorized_keys, 1):
        if "\n" in key.strip() or not _KEY_TYPES.match(key.strip()):
            raise KilnError(f"user_data: SSH key {number} is not an OpenSSH public key line "
                            f"({key.strip()[:30]!r}…)")
    if mirror is None:
        return
    if _ARMOURED_KEY not in mirror.key:
        raise KilnError(f"user_data: mirror {mirror.name}: key is not an ASCII-armoured "
                        "OpenPGP public key")
    if not mirror.sources:
        raise KilnError(f"user_data: mirror {mirror.name}: no sources")
    for source in mirror.sources:
        if not re.fullmatch(r"https?://\S+", source.uri) or not source.suite.strip():
            raise KilnError(f"user_data: mirror {mirror.name}: bad source "
                            f"{source.uri!r} {source.suite!r}")


def cloud_config(ssh_authorized_keys: Sequence[str], mirror: AptMirror | None = None) -> str:
    """The user_data text (MAAS is given it base64-encoded by the client)."""
    _check(ssh_authorized_keys, mirror)
    document: dict[str, object] = {
        "ssh_authorized_keys": [key.strip() for key in ssh_authorized_keys],
    }
    if mirror is not None:
        sources = {}
        for source in mirror.sources:
            label = re.sub(r"[^A-Za-z0-9_.-]", "-", source.uri.rstrip("/").rsplit("/", 1)[-1])
            name = f"{mirror.name}-{label}"
            if f"{name}.list" in sources:  # two sources under the same last path segment
                name += f"-{len(sources) + 1}"
            sources[f"{name}.list"] = {
                "source": f"deb [signed-by=$KEY_FILE] {source.uri} {source.suite} "
                          + " ".join(source.components),
                "key": mirror.key.strip() + "\n",
            }
        document["apt"] = {"sources": sources}
    return "#cloud-config\n" + yaml.safe_dump(document, sort_keys=False, width=1000)

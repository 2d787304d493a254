"""Where a node's apt installs from: the cluster's mirror (roles/mirror), or the sources host
data kiln_apt_mirror names (a cluster without kiln's mirror, or a lab pointed straight at
its vendor repository). Either way it is one sources file, one signing key, nothing else.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from kiln.core.errors import KilnError
from kiln.roles.base.settings import AptMirror
from kiln.roles.base.templates import render

KEYRING = "/etc/apt/keyrings/kiln-mirror.asc"
SOURCES_FILE = "/etc/apt/sources.list.d/kiln-mirror.list"
ARMORED_KEY = "-----BEGIN PGP PUBLIC KEY BLOCK-----"


@dataclass(frozen=True)
class AptSourceConfig:
    text: str  # the sources file
    key: str  # the armored signing key
    indexes: tuple[tuple[str, str], ...]  # (uri, "suite/component") apt must have an index of
    origin: str  # where the configuration comes from, for messages


def sources_indexed(indexes: tuple[tuple[str, str], ...], policy: list[dict]) -> bool:
    """apt has an index for every configured source (an update has run since they changed)."""
    have = {(entry["uri"], entry["dist"]) for entry in policy}
    return all(index in have for index in indexes)


@cache
def signing_key(source: str) -> str:
    """The armored signing key at `source` (http(s) URL or controller path), read once per run.

    Read on the controller, so the node receives exactly these bytes and a second run
    compares them, instead of trusting whatever a node-side download returns.
    """
    where = f"host data kiln_apt_mirror.key {source!r}"
    try:
        if source.startswith(("http://", "https://")):
            with urllib.request.urlopen(source, timeout=20) as response:  # noqa: S310
                text = response.read(1 << 20).decode("utf-8", "replace")
        else:
            text = Path(source).expanduser().read_text(encoding="utf-8", errors="replace")
    except urllib.error.URLError as exc:
        raise KilnError(f"{where}: cannot fetch: {getattr(exc, 'reason', exc)}") from None
    except OSError as exc:
        raise KilnError(f"{where}: cannot read: {exc.strerror or exc}") from None
    if ARMORED_KEY not in text:
        raise KilnError(f"{where}: not an armored OpenPGP public key ({ARMORED_KEY!r} missing)")
    return text if text.endswith("\n") else text + "\n"


def from_host_data(mirror: AptMirror) -> AptSourceConfig:
    text = render("base/kiln-mirror.list.j2", sources=mirror.sources, keyring=KEYRING)
    indexes = tuple((source.uri, f"{source.suite}/{component}")
                    for source in mirror.sources for component in source.components)
    return AptSourceConfig(text, signing_key(mirror.key), indexes, "host data kiln_apt_mirror")


def from_cluster_mirror(data: Any) -> AptSourceConfig:
    """The cluster mirror's source and key, byte for byte what roles/mirror writes for its
    clients, so the two never undo each other."""
    from kiln.roles.mirror import mirror_address, mirror_public_key
    from kiln.roles.mirror.render import apt_sources
    from kiln.roles.mirror.settings import settings_from_data

    settings = settings_from_data(data)
    address = mirror_address(settings)
    if address is None:
        raise KilnError("no apt source: host data kiln_apt_mirror is not set and the cluster "
                        "has no mirror (no service node, no kiln_mirror_host)")
    public = mirror_public_key(settings.state)
    url = settings.http_url(address)
    return AptSourceConfig(apt_sources(url, settings.suite), public,
                           ((f"{url}apt", f"{settings.suite}/main"),),
                           f"the cluster mirror at {url}")


def apt_source_config(mirror: AptMirror | None, data: Any) -> AptSourceConfig:
    return from_host_data(mirror) if mirror is not None else from_cluster_mirror(data)

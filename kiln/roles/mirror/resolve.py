"""Which .debs the mirror must hold: resolved by apt itself, on the controller.

apt runs in a throwaway state of its own under `<kiln_mirror_state>/apt/` (sources list,
preferences, lists, cache, and the dpkg status it resolves against), never touching the
controller's own apt. It reads the upstream's signed indexes (checked against each source's
key), then `apt-get install --print-uris` says which .debs installing the pins on a node of
the base image needs, and `apt-cache show` gives their records for the mirror's index.
Nothing is downloaded here: the service node fetches the files (see roles.mirror).

The dpkg status is the base OS image's (kiln_mirror_base_status), so the closure holds only
what a node lacks; without one an empty status makes it the full closure. Pinned packages
are always in the mirror, even when the base image already has them (asked for again with
`--reinstall`).
Each SKU is resolved on its own: two SKUs may pin different versions of one package.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kiln.core.errors import KilnError
from kiln.roles.mirror.aptrepo import PackageRecord, parse_print_uris, parse_records
from kiln.roles.mirror.settings import AptUpstream

# One resolution per controller process and input: pyinfra evaluates an operation twice
# (preview, then execution), and once per service node.
_RESOLVED: dict[str, list[ResolvedDeb]] = {}


class ResolveError(KilnError):
    """apt could not resolve the pins against the upstream; the message has apt's words."""


@dataclass(frozen=True)
class ResolvedDeb:
    url: str  # where the upstream serves it
    record: PackageRecord  # the upstream's index record (Filename still the upstream's)
    requested_by: str  # "sku lab" or "os packages"


def _sources_list(upstream: Sequence[AptUpstream]) -> str:
    lines = []
    for source in upstream:
        key = Path(source.key).expanduser().resolve()
        if not key.is_file():
            raise ResolveError(
                f"host data kiln_mirror_apt_upstream: key {source.key} for {source.uri} "
                "does not exist on the controller"
            )
        lines.append(
            f"deb [signed-by={key}] {source.uri} {source.suite} {' '.join(source.components)}"
        )
    return "\n".join(lines) + "\n"


def preferences_text(pins: dict[str, str]) -> str:
    """Pin every package at its exact version: a dependency on an older pinned release
    (`fabricmanager (= driver version)`) then resolves as it does on the node."""
    return "\n".join(
        f"Package: {name}\nPin: version {version}\nPin-Priority: 1001\n"
        for name, version in sorted(pins.items())
    )


class AptResolver:
    """apt in a directory of its own: `update` once, then `resolve` per set of pins."""

    def __init__(self, state: Path, arch: str, upstream: Sequence[AptUpstream],
                 base_status: Path | None):
        self.state = Path(state)
        self.arch = arch
        self.upstream = list(upstream)
        self.base_status = base_status

    def _status(self) -> Path:
        if self.base_status is not None:
            if not self.base_status.is_file():
                raise ResolveError(
                    f"host data kiln_mirror_base_status: {self.base_status} does not exist"
                )
            return self.base_status
        empty = self.state / "empty-status"
        empty.touch()
        return empty

    def _options(self) -> list[str]:
        state = self.state
        options = {
            "Dir::Etc::sourcelist": state / "sources.list",
            "Dir::Etc::sourceparts": state / "sources.list.d",
            "Dir::Etc::preferences": state / "preferences",
            "Dir::Etc::preferencesparts": state / "preferences.d",
            "Dir::State": state / "state",
            "Dir::State::Lists": state / "lists",
            "Dir::State::status": self._status(),
            "Dir::Cache": state / "cache",
            "Dir::Cache::archives": state / "archives",
            "Debug::NoLocking": "true",
            "APT::Architecture": self.arch,
            "APT::Architectures": self.arch,
            "APT::Install-Recommends": "false",
            "APT::Get::Assume-Yes": "true",
            "APT::Get::Download-Only": "true",
            # The lists are private to this directory: no need to drop to _apt to fetch them.
            "APT::Sandbox::User": "root" if os.geteuid() == 0 else "",
        }
        args = []
        for key, value in options.items():
            if value != "":
                args += ["-o", f"{key}={value}"]
        return args

    def _run(self, tool: str, args: list[str], what: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"}
        result = subprocess.run(
            [tool, *self._options(), *args], capture_output=True, text=True, env=env
        )
        if result.returncode != 0:
            detail = (result.stderr.strip() or result.stdout.strip())[-3000:]
            raise ResolveError(f"{tool} {what} (resolving the mirror's apt closure): {detail}")
        return result

    def prepare(self, pins: dict[str, str] | None = None) -> None:
        for sub in ("sources.list.d", "preferences.d", "state", "lists/partial", "cache",
                    "archives/partial"):
            (self.state / sub).mkdir(parents=True, exist_ok=True)
        (self.state / "sources.list").write_text(_sources_list(self.upstream))
        (self.state / "preferences").write_text(preferences_text(pins or {}))

    def update(self) -> None:
        self.prepare()
        result = self._run("apt-get", ["update"], "update")
        # apt-get update exits 0 when a source could not be fetched; a mirror built from a
        # partial view of the upstream would silently miss packages.
        lines = (result.stdout + result.stderr).splitlines()
        problems = [
            line for line in lines
            if line.startswith(("Err:", "E:", "W: Failed to fetch", "W: Some index files"))
            or "NO_PUBKEY" in line or "is not signed" in line
        ]
        if problems:
            raise ResolveError("apt-get update against the upstream: " + "; ".join(problems))

    def resolve(self, packages: dict[str, str | None], requested_by: str) -> list[ResolvedDeb]:
        """.debs installing `packages` (name → exact version, or None for the candidate)
        needs on a base-image node, each with its upstream record."""
        pins = {name: version for name, version in packages.items() if version}
        self.prepare(pins)
        wanted = [f"{name}={version}" if version else name for name, version in packages.items()]
        output = self._run(
            "apt-get", ["-qq", "install", "--print-uris", *sorted(wanted)],
            f"install --print-uris for {requested_by}",
        ).stdout
        uris = parse_print_uris(output)
        # A pin the base image already has at that version needs no download on a node,
        # but the mirror holds every pin: ask for those again as reinstalls.
        in_base = sorted(f"{name}={version}" for name, version in pins.items()
                         if (name, version) not in {(u.package, u.version) for u in uris})
        if in_base:
            output = self._run(
                "apt-get", ["-qq", "install", "--reinstall", "--print-uris", *in_base],
                f"install --reinstall --print-uris for {requested_by}",
            ).stdout
            uris += [u for u in parse_print_uris(output) if f"{u.package}={u.version}" in in_base]
        if not uris:
            return []
        shown = self._run(
            "apt-cache", ["show", "--no-all-versions",
                          *sorted({f"{u.package}={u.version}" for u in uris})],
            f"show for {requested_by}",
        ).stdout
        records = {record.key: record for record in parse_records(shown)}
        resolved = []
        for uri in uris:
            record = records.get((uri.package, uri.version, uri.architecture))
            if record is None:
                raise ResolveError(
                    f"apt-cache show printed no record for {uri.package} {uri.version} "
                    f"({uri.architecture}), which apt-get would download from {uri.url}"
                )
            resolved.append(ResolvedDeb(url=uri.url, record=record, requested_by=requested_by))
        return resolved


def resolve_closure(
    resolver: AptResolver, sku_pins: dict[str, dict[str, str]], os_packages: Sequence[str]
) -> list[ResolvedDeb]:
    """Everything the mirror's apt/ must hold for these SKUs (memoized per input)."""
    status = resolver._status()
    fingerprint = hashlib.sha256(
        json.dumps(
            [resolver.arch, [u.model_dump() for u in resolver.upstream], sku_pins,
             sorted(os_packages), str(status)],
            sort_keys=True,
        ).encode()
        + status.read_bytes()
    ).hexdigest()
    if fingerprint in _RESOLVED:
        return _RESOLVED[fingerprint]
    resolver.update()
    debs: dict[tuple[str, str, str], ResolvedDeb] = {}
    requests: list[tuple[str, dict[str, str | None]]] = []
    for sku, pins in sorted(sku_pins.items()):
        packages: dict[str, str | None] = dict(pins)
        # Resolved together with the pins, so one consistent set of versions is mirrored.
        packages.update({name: None for name in os_packages if name not in pins})
        requests.append((f"sku {sku}", packages))
    if not sku_pins and os_packages:
        requests.append(("os packages", {name: None for name in os_packages}))
    for requested_by, packages in requests:
        for deb in resolver.resolve(packages, requested_by):
            debs.setdefault(deb.record.key, deb)
    result = sorted(debs.values(), key=lambda deb: deb.record.key)
    _RESOLVED[fingerprint] = result
    return result

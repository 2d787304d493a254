"""The mirror's apt repository as text: package records, Packages, Release.

Pure functions: the records come from apt itself (the upstream's signed, verified indexes,
as `apt-cache show` prints them); this module only rewrites where the file lives on the
mirror and writes the index files apt reads:

    apt/pool/main/<name>_<version without epoch>_<arch>.deb
    apt/dists/<suite>/main/binary-<arch>/Packages(.gz)
    apt/dists/<suite>/Release, InRelease, Release.gpg   (signed on the controller)
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import urllib.parse
from dataclasses import dataclass

from kiln.core.errors import KilnError

COMPONENT = "main"
# `'URL' FILE SIZE HASHTYPE:HEX` — one line per .deb of `apt-get install --print-uris`.
# (file: sources print no hash)
_PRINT_URIS = re.compile(r"^'(?P<url>[^']+)' (?P<file>\S+) (?P<size>\d+)(?: (?P<hash>\S*))?$")


class AptIndexError(KilnError):
    """apt printed something this module cannot read; the message quotes it."""


@dataclass(frozen=True)
class PackageRecord:
    """One binary package: its fields as the upstream index has them, in their order."""

    fields: tuple[tuple[str, str], ...]

    def get(self, name: str, default: str = "") -> str:
        for key, value in self.fields:
            if key.lower() == name.lower():
                return value
        return default

    @property
    def package(self) -> str:
        return self.get("Package")

    @property
    def version(self) -> str:
        return self.get("Version")

    @property
    def architecture(self) -> str:
        return self.get("Architecture")

    @property
    def sha256(self) -> str:
        return self.get("SHA256").lower()

    @property
    def size(self) -> int:
        return int(self.get("Size", "0"))

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.package, self.version, self.architecture)

    def pool_file(self) -> str:
        """The file name on the mirror, Debian's own convention: the epoch is not in it."""
        upstream = self.version.split(":", 1)[1] if ":" in self.version else self.version
        return f"{self.package}_{upstream}_{self.architecture}.deb"

    def with_filename(self, filename: str) -> PackageRecord:
        fields = tuple(
            (key, filename if key == "Filename" else value) for key, value in self.fields
        )
        return PackageRecord(fields)

    def text(self) -> str:
        lines = []
        for key, value in self.fields:
            first, *rest = value.split("\n")
            lines.append(f"{key}: {first}" if first else f"{key}:")
            lines += [line if line.startswith((" ", "\t")) else f" {line}" for line in rest]
        return "\n".join(lines) + "\n"


def parse_records(text: str) -> list[PackageRecord]:
    """Deb822 stanzas (Packages files, `apt-cache show`) → records; continuation lines kept."""
    records = []
    for number, block in _stanzas(text):
        fields: list[tuple[str, str]] = []
        for offset, line in enumerate(block):
            if line.startswith((" ", "\t")):
                if not fields:
                    raise AptIndexError(f"line {number + offset}: continuation before any field")
                key, value = fields[-1]
                fields[-1] = (key, f"{value}\n{line}")
                continue
            key, colon, value = line.partition(":")
            if not colon or not key or " " in key:
                raise AptIndexError(f"line {number + offset}: not a 'Field: value' line: {line!r}")
            fields.append((key, value.strip()))
        record = PackageRecord(tuple(fields))
        if not (record.package and record.version and record.architecture):
            raise AptIndexError(f"line {number}: stanza without Package/Version/Architecture")
        records.append(record)
    return records


def _stanzas(text: str) -> list[tuple[int, list[str]]]:
    stanzas: list[tuple[int, list[str]]] = []
    current: list[str] = []
    start = 1
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            if not current:
                start = number
            current.append(line)
        elif current:
            stanzas.append((start, current))
            current = []
    if current:
        stanzas.append((start, current))
    return stanzas


@dataclass(frozen=True)
class DownloadURI:
    """One line of `apt-get --print-uris`: what apt would download for an install."""

    url: str
    file: str
    size: int
    package: str
    version: str
    architecture: str


def parse_print_uris(text: str) -> list[DownloadURI]:
    """The .deb lines of `apt-get -qq install --print-uris`; apt's file name is
    `<name>_<version, ':' as %3a>_<arch>.deb`."""
    uris = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.startswith("'"):
            continue
        match = _PRINT_URIS.match(line.strip())
        if not match:
            raise AptIndexError(f"apt-get --print-uris line {number}: cannot read {line!r}")
        name = match["file"]
        if not name.endswith(".deb") or name.count("_") != 2:
            raise AptIndexError(f"apt-get --print-uris line {number}: not a .deb: {name!r}")
        package, version, arch = name[: -len(".deb")].split("_")
        uris.append(
            DownloadURI(
                url=match["url"],
                file=name,
                size=int(match["size"]),
                package=package,
                version=urllib.parse.unquote(version),
                architecture=arch,
            )
        )
    return uris


def packages_text(records: list[PackageRecord], pool: str = f"pool/{COMPONENT}") -> str:
    """The Packages index of `records`, each pointing at its file in the mirror's pool."""
    unique = {record.key: record for record in records}
    ordered = sorted(unique.values(), key=lambda record: record.key)
    return "\n".join(
        record.with_filename(f"{pool}/{record.pool_file()}").text() for record in ordered
    )


def gzip_bytes(data: bytes) -> bytes:
    """gzip with a fixed header (no name, mtime 0): the same input gives the same bytes."""
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, filename="") as compressed:
        compressed.write(data)
    return buffer.getvalue()


def release_text(
    suite: str, arch: str, index_files: dict[str, bytes], date: str, label: str = "kiln mirror"
) -> str:
    """A Release file for `suite` listing `index_files` (paths relative to dists/<suite>/).

    `date` is when the indexes last changed (RFC 2822, UTC): the caller keeps the previous
    one while nothing else changes, so an unchanged repository keeps its signed Release.
    """
    lines = [
        "Origin: kiln",
        f"Label: {label}",
        f"Suite: {suite}",
        f"Codename: {suite}",
        f"Date: {date}",
        f"Architectures: {arch}",
        f"Components: {COMPONENT}",
        f"Description: {label}: what the cluster's manifests pin, and its closure",
        "SHA256:",
    ]
    for path in sorted(index_files):
        data = index_files[path]
        lines.append(f" {hashlib.sha256(data).hexdigest()} {len(data):>16} {path}")
    return "\n".join(lines) + "\n"


def release_without_date(text: str) -> str:
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith("Date:"))


def release_date(text: str) -> str | None:
    for line in text.splitlines():
        if line.startswith("Date:"):
            return line.partition(":")[2].strip()
    return None

"""Parsers for what dpkg and apt print: installed packages, holds, the index, pins, policy.

All parsers are pure: text in, plain data out. Text that is not what the tool prints raises
`ParseError` naming the line.

parse_dpkg_query(text) -> {name: {"version": str, "want": str, "status": str}}
    `dpkg-query -W -f '${Package}\\t${Version}\\t${db:Status-Abbrev}\\n'`. want/status are
    the first two letters of the abbreviation ("h"/"i", "i"/"c"/"U"...). A package name may
    appear once per architecture; the native one (listed first) is kept.
parse_showhold(text) -> [name]            `apt-mark showhold`, sorted
parse_apt_cache_show(text) -> {name: {version: {"depends": [[name, ...], ...],
                                                "exact": {name: version}}}}
    (`exact`: the dependencies on one exact version, `name (= version)`)
    `apt-cache show NAME...`: every version apt knows. Each Depends/Pre-Depends relation is
    the list of its alternatives' package names (versions and architectures dropped).
parse_preferences(text) -> [{"package": str, "pin": str, "priority": int}]
    an apt_preferences(5) file; comment lines and "Explanation:" fields are skipped.
parse_apt_policy_sources(text) -> [{"uri": str, "dist": str, "priority": int}]
    the "Package files:" of `apt-cache policy` (no arguments): the sources whose index apt
    has downloaded, e.g. {"uri": "http://10.231.0.1:8081/apt", "dist": "kilnlab/main"}.
parse_named_files(text) -> {path: text}   `==> PATH <==` headed blocks (see facts.FileTexts)
"""

from __future__ import annotations

import re
from typing import Any

from kiln.core.parsing import ParseError

_PACKAGE_NAME = re.compile(r"^[a-z0-9][a-z0-9.+-]+$")


def parse_dpkg_query(text: str) -> dict[str, dict[str, str]]:
    packages: dict[str, dict[str, str]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 3 or not _PACKAGE_NAME.match(fields[0]) or len(fields[2]) < 2:
            raise ParseError(
                f"line {number}: expected 'name<TAB>version<TAB>status' from dpkg-query, "
                f"got {line!r}"
            )
        name, version, abbrev = fields
        if name not in packages:
            packages[name] = {"version": version, "want": abbrev[0], "status": abbrev[1]}
    return packages


def parse_dpkg_journal(text: str) -> list[str]:
    """`ls -1 /var/lib/dpkg/updates`: the journal entries (names all digits), sorted; dpkg's
    scratch file (tmp.i) and anything else there are not entries."""
    return sorted(name for name in (line.strip() for line in text.splitlines())
                  if name.isdigit())


def parse_showhold(text: str) -> list[str]:
    names = set()
    for number, line in enumerate(text.splitlines(), start=1):
        name = line.strip().split(":", 1)[0]
        if not name:
            continue
        if not _PACKAGE_NAME.match(name):
            raise ParseError(f"line {number}: {line.strip()!r} is not a package name")
        names.add(name)
    return sorted(names)


def _stanzas(text: str) -> list[tuple[int, dict[str, str]]]:
    """deb822 paragraphs: (first line number, {field: value}); continuation lines joined."""
    stanzas: list[tuple[int, dict[str, str]]] = []
    fields: dict[str, str] = {}
    start = 0
    last = None
    for number, raw in enumerate(text.splitlines(), start=1):
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if fields:
                stanzas.append((start, fields))
            fields, last = {}, None
            continue
        if raw[0] in " \t":
            if last is None:
                raise ParseError(f"line {number}: continuation line outside a field: {raw!r}")
            fields[last] += "\n" + raw.strip()
            continue
        name, colon, value = raw.partition(":")
        if not colon or not name.strip():
            raise ParseError(f"line {number}: expected 'Field: value', got {raw!r}")
        if not fields:
            start = number
        last = name.strip()
        fields[last] = value.strip()
    if fields:
        stanzas.append((start, fields))
    return stanzas


def _relation_names(value: str) -> list[list[str]]:
    relations = []
    for relation in value.split(","):
        alternatives = []
        for alternative in relation.split("|"):
            name = alternative.strip().split("(", 1)[0].split("[", 1)[0].strip()
            name = name.split(":", 1)[0]
            if name:
                alternatives.append(name)
        if alternatives:
            relations.append(alternatives)
    return relations


_EXACT = re.compile(r"^([a-z0-9][a-z0-9+.-]*)(?::[a-z0-9-]+)?\s*\(\s*=\s*([^)\s]+)\s*\)")


def _exact_versions(value: str) -> dict[str, str]:
    """Dependencies on one exact version, `name (= version)`, without alternatives."""
    exact = {}
    for relation in value.split(","):
        if "|" in relation:
            continue
        match = _EXACT.match(relation.strip())
        if match:
            exact[match.group(1)] = match.group(2)
    return exact


def parse_apt_cache_show(text: str) -> dict[str, dict[str, dict[str, Any]]]:
    index: dict[str, dict[str, dict[str, Any]]] = {}
    for start, fields in _stanzas(text):
        if "Package" not in fields or "Version" not in fields:
            raise ParseError(f"line {start}: a record without Package and Version fields")
        relations = [fields.get("Pre-Depends", ""), fields.get("Depends", "")]
        depends = [names for value in relations for names in _relation_names(value)]
        exact = {name: version for value in relations
                 for name, version in _exact_versions(value).items()}
        versions = index.setdefault(fields["Package"], {})
        versions.setdefault(fields["Version"], {"depends": depends, "exact": exact})
    return index


def parse_preferences(text: str) -> list[dict[str, Any]]:
    pins = []
    for start, fields in _stanzas(text):
        if "Package" not in fields:
            raise ParseError(f"line {start}: a preferences record without a Package field")
        if "Pin" not in fields or "Pin-Priority" not in fields:
            raise ParseError(f"line {start}: record for {fields['Package']!r} lacks Pin or "
                             "Pin-Priority")
        try:
            priority = int(fields["Pin-Priority"])
        except ValueError:
            raise ParseError(
                f"line {start}: Pin-Priority {fields['Pin-Priority']!r} is not a number"
            ) from None
        for package in fields["Package"].split():
            pins.append({"package": package, "pin": fields["Pin"], "priority": priority})
    return pins


_POLICY_SOURCE = re.compile(r"^\s*(-?\d+)\s+(\S+://\S+)\s+(\S+)\s+\S+\s+Packages\s*$")


def parse_apt_policy_sources(text: str) -> list[dict[str, Any]]:
    lines = text.splitlines()
    if not any(line.startswith("Package files:") for line in lines):
        raise ParseError("line 1: no 'Package files:' section; not `apt-cache policy` output")
    sources = []
    for line in lines:
        match = _POLICY_SOURCE.match(line)
        if match:
            sources.append({"uri": match.group(2).rstrip("/"), "dist": match.group(3),
                            "priority": int(match.group(1))})
    return sources


_FILE_HEADER = re.compile(r"^==> (/\S*) <==$")


def parse_named_files(text: str) -> dict[str, str]:
    files: dict[str, list[str]] = {}
    current: list[str] | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        header = _FILE_HEADER.match(line)
        if header:
            current = files.setdefault(header.group(1), [])
            continue
        if current is None:
            raise ParseError(f"line {number}: text before the first '==> PATH <==' header")
        current.append(line)
    return {path: "".join(f"{line}\n" for line in lines) for path, lines in files.items()}

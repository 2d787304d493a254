"""Facts about a node's packages, apt configuration and services; parsing lives in parsers.py.

Each command exits 0 on a healthy node whatever it finds (a missing file, an unknown package
is data, not an error), so a non-zero exit means the tool itself failed and pyinfra fails
the host.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from typing import Any

from pyinfra.api import FactBase

from kiln.core.parsing import ParseError, parse_fact_output
from kiln.roles.base.parsers import (
    parse_apt_cache_show,
    parse_apt_policy_sources,
    parse_dpkg_journal,
    parse_dpkg_query,
    parse_named_files,
    parse_showhold,
)


def _quoted(names: Iterable[str]) -> str:
    return " ".join(shlex.quote(name) for name in sorted(set(names)))


class DebPackages(FactBase):
    """Every package dpkg knows: {name: {version, want, status}} (want "h" = held)."""

    default = dict

    def command(self) -> str:
        return "dpkg-query -W -f '${Package}\\t${Version}\\t${db:Status-Abbrev}\\n'"

    def process(self, output: list[str]) -> dict[str, dict[str, str]]:
        return parse_fact_output(parse_dpkg_query, output)


def installed_versions(packages: dict[str, dict[str, str]]) -> dict[str, str]:
    """name -> version of the packages that are installed (not removed, not half-done)."""
    return {name: entry["version"] for name, entry in packages.items()
            if entry["status"] == "i"}


# dpkg's status letters (dpkg-query's db:Status-Abbrev, second letter) of a package whose
# unpacking or configuring was cut off: Unpacked, half-conFigured, triggers-aWaited and
# triggers-pending (t), which `dpkg --configure -a` finishes, and Half-installed (H), which
# only a reinstall mends (base's dpkg-finish script does it, as for a package dpkg flags
# reinstall-required).
UNCONFIGURED = frozenset("UFWtH")


def unconfigured_packages(packages: dict[str, dict[str, str]]) -> dict[str, str]:
    """name -> status letter of the packages an interrupted dpkg left to configure."""
    return {name: entry["status"] for name, entry in packages.items()
            if entry["status"] in UNCONFIGURED}


class DpkgJournal(FactBase):
    """The entries of dpkg's update journal (/var/lib/dpkg/updates/NNNN), sorted.

    dpkg writes one per status change and folds them into its status file when it exits
    normally; entries left behind mean a dpkg was killed, and apt refuses to run ("dpkg was
    interrupted") until `dpkg --configure -a` replays them. `tmp.i` is dpkg's scratch file,
    not an entry."""

    default = list

    def command(self) -> str:
        return "ls -1 /var/lib/dpkg/updates 2>/dev/null || true"

    def process(self, output: list[str]) -> list[str]:
        return parse_fact_output(parse_dpkg_journal, output)


# apt-cache and apt-mark rebuild /var/cache/apt/*.bin when they find them stale: a fact
# would write on the node it only reads. With the caches named empty, apt builds them in
# memory only.
APT_READ_ONLY = "-o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache="
APT_CACHE = f"apt-cache {APT_READ_ONLY}"


class AptHolds(FactBase):
    """Packages on hold (`apt-mark showhold`), sorted."""

    default = list

    def command(self) -> str:
        return f"apt-mark {APT_READ_ONLY} showhold"

    def process(self, output: list[str]) -> list[str]:
        return parse_fact_output(parse_showhold, output)




class AptPackageIndex(FactBase):
    """What the node's apt index holds for these names: {name: {version: {depends}}}.

    A name apt does not know is absent from the result.
    """

    default = dict

    def command(self, names: Iterable[str]) -> str:
        # One apt-cache per name: `apt-cache show a b` prints nothing at all when one of
        # the names is unknown.
        return (
            f"for name in {_quoted(names)}; do "
            f'{APT_CACHE} show "$name" 2>/dev/null && echo; done; true'
        )

    def process(self, output: list[str]) -> dict[str, Any]:
        return parse_fact_output(parse_apt_cache_show, output)


class AptPolicySources(FactBase):
    """The sources apt has an index for (`apt-cache policy`): [{uri, dist, priority}]."""

    default = list

    def command(self) -> str:
        return f"{APT_CACHE} policy"

    def process(self, output: list[str]) -> list[dict[str, Any]]:
        return parse_fact_output(parse_apt_policy_sources, output)


class AptSourceFiles(FactBase):
    """Files apt reads sources from that hold at least one source, sorted."""

    default = list

    def command(self) -> str:
        return (
            "find /etc/apt/sources.list.d -maxdepth 1 -type f "
            "\\( -name '*.list' -o -name '*.sources' \\) 2>/dev/null | sort; "
            "grep -qE '^[[:space:]]*deb' /etc/apt/sources.list 2>/dev/null "
            "&& echo /etc/apt/sources.list; true"
        )

    def process(self, output: list[str]) -> list[str]:
        return sorted(line.strip() for line in output if line.strip())


class FileTexts(FactBase):
    """The text of every regular file matching a shell glob: {path: text}."""

    default = dict

    def command(self, glob: str) -> str:
        if any(c in glob for c in " \t\n'\"$`;&|<>()\\"):
            raise ValueError(f"{glob!r}: a plain path glob, without shell syntax")
        return f'for f in {glob}; do [ -f "$f" ] && echo "==> $f <==" && cat "$f"; done; true'

    def process(self, output: list[str]) -> dict[str, str]:
        return parse_fact_output(parse_named_files, output)


class ServiceStates(FactBase):
    """{unit: {"enabled": …, "active": …}} as `systemctl is-enabled/is-active` say them
    ("" for a unit systemctl does not know)."""

    default = dict

    def command(self, units: Iterable[str]) -> str:
        return (
            f"for unit in {_quoted(units)}; do "
            'printf "%s\\t%s\\t%s\\n" "$unit" '
            '"$(systemctl is-enabled "$unit" 2>/dev/null | head -n 1)" '
            '"$(systemctl is-active "$unit" 2>/dev/null | head -n 1)"; done'
        )

    def process(self, output: list[str]) -> dict[str, dict[str, str]]:
        states = {}
        for number, line in enumerate(output, start=1):
            fields = line.split("\t")
            if len(fields) != 3:
                from pyinfra.api.exceptions import FactProcessError

                raise FactProcessError(str(ParseError(
                    f"line {number}: expected 'unit<TAB>enabled<TAB>active', got {line!r}")))
            states[fields[0]] = {"enabled": fields[1].strip(), "active": fields[2].strip()}
        return states

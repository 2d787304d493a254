"""Exact, held package sets: which versions to pin, and the one apt transaction that gets there.

Pure logic, no pyinfra: facts go in, pins and a plan come out (roles.base.operations runs it).

A *pin set* is a group of packages that move together (the kernel; the NVIDIA driver with its
fabric manager and persistence daemon; NCCL ...). Each set is written to its own apt
preferences file, `/etc/apt/preferences.d/kiln-<scope>-<set>.pref`, one `Pin: version`
record per package at priority 1001: above 1000 apt installs that version even when it is a
downgrade, and a dependency resolves at the pinned version instead of the newest one (the
"older releases need a pin" rule of any repository holding several releases). Held packages
(`apt-mark hold`) are never moved by `apt-get upgrade` or by someone's `apt-get install`.

The manifest names the packages people choose; their *companions* are pinned too: a
dependency that exists at exactly the depending package's version is a binary of the same
source release (the driver metapackage and its libnvidia-compute/nvidia-utils/...; DCGM and
its core package; the container toolkit and its base/tools/library), and a dependency on one
exact version (`mft (= 4.30.0-139)`) is part of the release that names it (an OFED release's
userspace, tools and perftest). Pinning only the metapackage leaves them free to drift, and
moving to an older release fails without them.

A change (a version moved, or the driver branch changed: different package names) is one
transaction: unhold the scope's held packages, one `apt-get install` naming every new
name=version and every package the set no longer has (`name-`), hold again. Doing it in
steps is what produces apt's "held broken packages": the new branch conflicts with the held
old one.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kiln.core.errors import KilnError

PIN_PRIORITY = 1001
PREFERENCES_DIR = "/etc/apt/preferences.d"
APT_GET = (
    "DEBIAN_FRONTEND=noninteractive apt-get -y -q -o Dpkg::Use-Pty=0 "
    "-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold"
)

# name -> version -> {"depends": [[alternative names], ...]}, as parsers.parse_apt_cache_show
AptIndex = dict[str, dict[str, dict[str, list[list[str]]]]]


class PinError(KilnError):
    """The pins cannot be satisfied as written; the message names the manifest field."""


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    source: str  # why it is pinned: the manifest field ("packages.dcgm"), or "… of X"
    hold: bool = True


@dataclass(frozen=True)
class PinSet:
    """Packages that move together, written to one preferences file."""

    scope: str  # the role owning the file: "base", "nvidia"
    name: str  # "kernel", "driver", ...
    pins: tuple[Pin, ...]
    # Packages this set pinned before and no longer names are removed in the transaction
    # (a driver branch change); False for the kernel, whose old image stays installed until
    # the node has booted the new one.
    remove_replaced: bool = True
    # Installed packages matching this are other releases of the set (another driver branch)
    # and are removed even when kiln did not install them; None: only what kiln pinned.
    family: str | None = None

    @property
    def path(self) -> str:
        return f"{PREFERENCES_DIR}/kiln-{self.scope}-{self.name}.pref"

    def with_pins(self, pins: Iterable[Pin]) -> PinSet:
        return PinSet(self.scope, self.name, tuple(pins), self.remove_replaced, self.family)


def package_pins(packages: Mapping[str, Any], keys: Iterable[str]) -> tuple[Pin, ...]:
    """The manifest's `packages.<key>` entries (name, version, hold) among `keys`, as pins;
    keys the manifest does not have are left out."""
    return tuple(Pin(packages[key].name, packages[key].version, f"packages.{key}",
                     packages[key].hold)
                 for key in keys if key in packages)


def scope_glob(scope: str) -> str:
    return f"{PREFERENCES_DIR}/kiln-{scope}-*.pref"


def set_name_of(scope: str, path: str) -> str | None:
    match = re.fullmatch(rf"{re.escape(PREFERENCES_DIR)}/kiln-{re.escape(scope)}-(.+)\.pref", path)
    return match.group(1) if match else None


def upstream_version(version: str) -> str:
    """Debian version without epoch and revision: 1:4.2.3-1kilnlab1 -> 4.2.3."""
    version = version.split(":", 1)[-1]
    return version.rsplit("-", 1)[0] if "-" in version else version


# --- companions --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resolution:
    sets: tuple[PinSet, ...]  # with companions added
    missing: tuple[Pin, ...]  # pins whose exact version the node's apt index does not have


def with_companions(
    sets: Iterable[PinSet], lookup: Callable[[set[str]], AptIndex], max_depth: int = 6
) -> Resolution:
    """Add every same-version or exact-version (`name (= v)`) dependency, transitively, to
    the set of the pin that needs it.

    `lookup(names)` returns the apt index entries of those names (absent names: unknown to
    apt); it is called once per dependency level, each name at most once.
    """
    index: AptIndex = {}

    def known(names: set[str]) -> None:
        wanted = {name for name in names if name not in index}
        if wanted:
            found = lookup(wanted)
            for name in wanted:
                index[name] = found.get(name, {})

    sets = tuple(sets)
    known({pin.name for pin_set in sets for pin in pin_set.pins})
    named = {pin.name for pin_set in sets for pin in pin_set.pins}
    missing = [pin for pin_set in sets for pin in pin_set.pins
               if pin.version not in index.get(pin.name, {})]
    pins = [list(pin_set.pins) for pin_set in sets]
    # Breadth first over every set at once: one lookup per dependency level.
    frontier = [(i, pin) for i, pin_set in enumerate(sets) for pin in pin_set.pins
                if pin not in missing]
    for _ in range(max_depth):
        if not frontier:
            break
        known({name for _, pin in frontier
               for relation in index[pin.name][pin.version]["depends"] for name in relation})
        found = []
        for i, pin in frontier:
            entry = index[pin.name][pin.version]
            exact = entry.get("exact", {})
            for relation in entry["depends"]:
                if len(relation) != 1:
                    continue  # an alternative is a choice, not part of the release
                name = relation[0]
                if name in named:
                    continue
                if pin.version in index.get(name, {}):
                    version, why = pin.version, f"same-version dependency of {pin.name}"
                elif name in exact and exact[name] in index.get(name, {}):
                    version, why = exact[name], f"exact dependency of {pin.name}"
                else:
                    continue
                named.add(name)
                found.append((i, Pin(name, version, why, pin.hold)))
        for i, companion in found:
            pins[i].append(companion)
        frontier = found
    result = [pin_set.with_pins(set_pins) for pin_set, set_pins in zip(sets, pins, strict=True)]
    return Resolution(tuple(result), tuple(missing))


# --- preferences files ------------------------------------------------------------------------


def render_preferences(pin_set: PinSet, manifest: str) -> str:
    """The apt preferences file of one set (templates/base/apt-pins.pref.j2). `manifest` is
    the manifest's file name: where the file came from, stable wherever the file lives."""
    from kiln.roles.base.templates import render

    return render("base/apt-pins.pref.j2", pin_set=pin_set, manifest=manifest,
                  priority=PIN_PRIORITY)


# --- the transaction --------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    install: tuple[tuple[str, str], ...] = ()  # (name, version) to install, up or down
    remove: tuple[str, ...] = ()  # replaced packages (another branch, a dropped companion)
    unhold: tuple[str, ...] = ()
    hold: tuple[str, ...] = ()
    release: tuple[str, ...] = field(default=())  # replaced but kept: only unheld

    @property
    def empty(self) -> bool:
        return not (self.install or self.remove or self.unhold or self.hold)

    def commands(self) -> list[str]:
        """Shell commands, in order. With packages to change it is one command, so that a
        failed transaction still holds again what was held (the node never stays unheld)."""
        if not (self.install or self.remove):
            commands = []
            if self.unhold:
                commands.append(_apt_mark("unhold", self.unhold))
            if self.hold:
                commands.append(_apt_mark("hold", self.hold))
            return commands
        targets = [f"{name}={version}" for name, version in self.install]
        targets += [f"{name}-" for name in self.remove]
        transaction = (
            f"{APT_GET} install --allow-downgrades --no-install-recommends "
            + " ".join(shlex.quote(target) for target in targets)
        )
        steps = [transaction]
        if self.unhold:
            steps.insert(0, _apt_mark("unhold", self.unhold))
        if self.hold:
            steps.append(_apt_mark("hold", self.hold))
        rehold = [name for name in self.unhold if name not in self.release]
        on_failure = "rc=$?; " + (_apt_mark("hold", rehold) + "; " if rehold else "")
        return ["{ " + " && ".join(steps) + "; } || { " + on_failure + "exit $rc; }"]

    def describe(self) -> str:
        parts = []
        if self.install:
            parts.append("install " + ", ".join(f"{n}={v}" for n, v in self.install))
        if self.remove:
            parts.append("remove " + ", ".join(self.remove))
        if self.unhold:
            parts.append("unhold " + ", ".join(self.unhold))
        if self.hold:
            parts.append("hold " + ", ".join(self.hold))
        return "; ".join(parts) or "nothing to change"


def _apt_mark(verb: str, names: Iterable[str]) -> str:
    return f"apt-mark {verb} " + " ".join(shlex.quote(name) for name in names) + " >/dev/null"


def desired_pins(sets: Iterable[PinSet]) -> dict[str, Pin]:
    """Every pin of the sets by package name; one package pinned twice must agree."""
    pins: dict[str, Pin] = {}
    for pin_set in sets:
        for pin in pin_set.pins:
            other = pins.get(pin.name)
            if other is not None and other.version != pin.version:
                raise PinError(
                    f"{pin.name} is pinned twice with different versions: {other.version} "
                    f"({other.source}) and {pin.version} ({pin.source})"
                )
            pins.setdefault(pin.name, pin)
    return pins


def plan_change(
    sets: Iterable[PinSet],
    installed: dict[str, str],
    held: Iterable[str],
    previously_pinned: dict[str, set[str]],
) -> Change:
    """What moves the node from its packages to the sets' pins, in one transaction.

    installed: name -> version of installed packages; held: `apt-mark showhold`;
    previously_pinned: set name -> package names in that set's preferences file on the node
    (the scope's files, those of sets that no longer exist included).
    """
    sets = tuple(sets)
    held = set(held)
    pins = desired_pins(sets)
    install = tuple((name, pin.version) for name, pin in sorted(pins.items())
                    if installed.get(name) != pin.version)
    current = {pin_set.name: pin_set for pin_set in sets}
    removable: set[str] = set()
    kept: set[str] = set()
    for set_name, names in previously_pinned.items():
        replaced = set(names) - set(pins)
        pin_set = current.get(set_name)
        (removable if pin_set is not None and pin_set.remove_replaced else kept).update(replaced)
    for pin_set in sets:
        if pin_set.family:
            family = re.compile(pin_set.family)
            removable.update(name for name in installed
                             if family.fullmatch(name) and name not in pins)
    remove = tuple(sorted(name for name in removable if name in installed))
    release = tuple(sorted(name for name in kept - removable if name in held))
    changing = bool(install or remove)
    wanted_held = {name for name, pin in pins.items() if pin.hold}
    if changing:
        # The whole scope is unheld for the transaction: a held package apt must touch to
        # satisfy the others is exactly the "held broken packages" failure.
        unhold = (held & (set(pins) | set(remove))) | set(release)
        hold = wanted_held
    else:
        unhold = (held & {name for name, pin in pins.items() if not pin.hold}) | set(release)
        hold = wanted_held - held
    return Change(install, remove, tuple(sorted(unhold)), tuple(sorted(hold)), release)

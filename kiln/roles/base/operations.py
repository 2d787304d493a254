"""Operations of the base role, and the pinning operations every role that installs uses.

Modelled on pyinfra's apt and server operations: each reads facts and yields only what must
change, so a second run on a converged node yields nothing and pyinfra reports "No changes".
A problem a person must fix (a version the mirror lacks, a bad setting) fails the host with
a message naming the file or field, through a FunctionCommand, never an exception: one
node's problem never stops the others.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Iterable
from io import StringIO
from pathlib import PurePosixPath

from pyinfra import host
from pyinfra.api import StringCommand, operation
from pyinfra.context import state as current_state
from pyinfra.facts.files import Directory
from pyinfra.facts.server import Sysctl
from pyinfra.operations import files

from kiln.core.errors import KilnError
from kiln.core.outcomes import fail, preview
from kiln.core.parsing import ParseError
from kiln.roles.base.aptpins import (
    APT_GET,
    PinSet,
    plan_change,
    render_preferences,
    scope_glob,
    set_name_of,
    with_companions,
)
from kiln.roles.base.aptsources import KEYRING, SOURCES_FILE, AptSourceConfig, sources_indexed
from kiln.roles.base.facts import (
    AptHolds,
    AptPackageIndex,
    AptPolicySources,
    AptSourceFiles,
    DebPackages,
    DpkgJournal,
    FileTexts,
    ServiceStates,
    installed_versions,
    unconfigured_packages,
)
from kiln.roles.base.parsers import parse_preferences
from kiln.roles.base.templates import render

logger = logging.getLogger("pyinfra")

SOURCES_LIST = "/etc/apt/sources.list"
NO_AUTO_UPGRADES = "/etc/apt/apt.conf.d/99kiln-no-auto-upgrades"
DPKG_LOCK_WAIT_CONF = "/etc/apt/apt.conf.d/90kiln-dpkg-lock"
LIMITS_FILE = "/etc/security/limits.d/90-kiln-rdma.conf"
SYSTEMD_LIMITS_FILE = "/etc/systemd/system.conf.d/90-kiln-rdma.conf"
SYSCTL_FILE = "/etc/sysctl.d/90-kiln.conf"
CHRONY_CONF = "/etc/chrony/chrony.conf"
CHRONY_DEFAULTS = "/etc/default/chrony"
# Warnings (a source that could not be fetched) fail the update too: a node must never go
# on with a stale index of the mirror.
APT_UPDATE = "apt-get update -q -o APT::Update::Error-Mode=any"


# --- previews ---------------------------------------------------------------------------------


def node_readable() -> bool:
    """Whether facts can be read from the node now.

    While the deploy runs: always. In a preview (no -y) only once pyinfra holds a session to
    the node: the @metal connector opens SSH on first use, and a node that is still to be
    imaged has no OS to read, so the preview says what will be converged instead.
    """
    if current_state.is_executing:
        return True
    return getattr(host.connector, "client", True) is not None


# --- what an interrupted run left ---------------------------------------------------------------



def dpkg_finish_command(lock_wait: int) -> StringCommand:
    script = render("base/dpkg-finish.sh.j2", seconds=int(lock_wait))
    return StringCommand("sh", "-c", shlex.quote(script))


@operation()
def dpkg_recovered(lock_wait: int):  # noqa: ANN201
    """dpkg finished whatever an interrupted run left, before any package work.

    A controller killed mid-install, a dropped SSH session or a node that lost power leaves
    dpkg's journal or packages unpacked but not configured; apt then refuses every install
    ("dpkg was interrupted, you must manually run 'dpkg --configure -a'"). kiln runs it,
    non-interactively, waiting (at most `lock_wait` s) for a process of the old run that
    still holds dpkg's lock. apt is told to wait as long for that lock (DPkg::Lock::Timeout).
    """
    if not node_readable():
        yield preview("dpkg and apt ready (an interrupted run finished)")
        return
    yield from files.put._inner(
        src=StringIO(render("base/90kiln-dpkg-lock.j2", seconds=int(lock_wait))),
        dest=DPKG_LOCK_WAIT_CONF, mode="644", create_remote_dir=True)
    journal = host.get_fact(DpkgJournal)
    unconfigured = unconfigured_packages(host.get_fact(DebPackages))
    if not journal and not unconfigured:
        host.noop("dpkg finished its last run")
        return
    left = []
    if journal:
        left.append(f"{len(journal)} journal entries")
    if unconfigured:
        left.append("unconfigured: " + ", ".join(sorted(unconfigured)))
    logger.info(f"{host.print_prefix}dpkg was interrupted ({'; '.join(left)}); "
                f"finishing it with dpkg --configure -a")
    yield dpkg_finish_command(lock_wait)


# --- apt sources --------------------------------------------------------------------------------


@operation()
def apt_mirror_only(config: AptSourceConfig):  # noqa: ANN201
    """apt's sources are the mirror's, signed by its key, and nothing else; index current."""
    if not node_readable():
        yield preview(f"apt sources ({config.origin} only)")
        return
    changed = False
    for command in files.put._inner(src=StringIO(config.key), dest=KEYRING, mode="644",
                                    create_remote_dir=True):
        changed = True
        yield command
    for command in files.put._inner(src=StringIO(config.text), dest=SOURCES_FILE, mode="644"):
        changed = True
        yield command
    for path in host.get_fact(AptSourceFiles):
        if path == SOURCES_FILE:
            continue
        changed = True
        if path == SOURCES_LIST:
            yield from files.put._inner(src=StringIO(render("base/sources.list.j2")),
                                        dest=SOURCES_LIST, mode="644")
        else:
            yield StringCommand("rm", "-f", shlex.quote(path))
    if changed or not sources_indexed(config.indexes, host.get_fact(AptPolicySources)):
        yield APT_UPDATE
    else:
        host.noop(f"apt uses {config.origin} only, and its index is current")


@operation()
def unattended_upgrades_off():  # noqa: ANN201
    """No package moves behind kiln's back: unattended-upgrades purged, apt's timers idle."""
    if not node_readable():
        yield preview("unattended-upgrades off")
        return
    packages = host.get_fact(DebPackages)
    if "unattended-upgrades" in installed_versions(packages):
        yield f"{APT_GET} purge unattended-upgrades"
    yield from files.put._inner(src=StringIO(render("base/99kiln-no-auto-upgrades.j2")),
                                dest=NO_AUTO_UPGRADES, mode="644")


# --- exact, held packages -----------------------------------------------------------------------


@operation()
def apt_index_current(pins: Iterable[tuple[str, str]]):  # noqa: ANN201
    """The node's apt index knows every pinned name=version (apt-get update if not).

    The mirror may have been filled since the node last updated; a version still unknown
    after the update fails the host in `pinned_packages`, naming the manifest field.
    """
    pins = list(pins)
    if not node_readable():
        yield preview("apt index")
        return
    index = host.get_fact(AptPackageIndex, names=sorted({name for name, _ in pins}))
    unknown = [f"{name}={version}" for name, version in pins
               if version not in index.get(name, {})]
    if unknown:
        yield APT_UPDATE
    else:
        host.noop("the apt index has every pinned version")


def _index_lookup(names: set[str]) -> dict:
    return host.get_fact(AptPackageIndex, names=sorted(names))


def _previously_pinned(scope: str) -> dict[str, set[str]]:
    pinned: dict[str, set[str]] = {}
    for path, text in host.get_fact(FileTexts, glob=scope_glob(scope)).items():
        set_name = set_name_of(scope, path)
        if set_name is None:
            continue
        try:
            pinned[set_name] = {entry["package"] for entry in parse_preferences(text)}
        except ParseError as exc:
            raise KilnError(f"{path}: {exc}") from None
    return pinned


@operation()
def pinned_packages(scope: str, sets: list[PinSet], manifest: str):  # noqa: ANN201
    """Every package of `sets` installed at exactly its version, pinned and held.

    The sets' preferences files are written first (apt resolves against them), then one
    transaction moves everything that differs, up or down, branch changes included.
    `manifest` names the file the versions come from, for the files' header and errors.
    """
    if not node_readable():
        yield preview(f"{scope} packages (exact and held)")
        return
    resolution = with_companions(sets, _index_lookup)
    if resolution.missing:
        listed = ", ".join(f"{pin.source}: {pin.name}={pin.version}"
                           for pin in resolution.missing)
        yield fail(f"{manifest}: not in the node's apt sources (is the mirror filled?): "
                      f"{listed}")
        return
    try:
        previously = _previously_pinned(scope)
        change = plan_change(resolution.sets, installed_versions(host.get_fact(DebPackages)),
                             host.get_fact(AptHolds), previously)
    except KilnError as exc:
        yield fail(f"{manifest}: {exc}")
        return
    wanted_files = {pin_set.path for pin_set in resolution.sets}
    for pin_set in resolution.sets:
        text = render_preferences(pin_set, PurePosixPath(manifest).name)
        yield from files.put._inner(src=StringIO(text), dest=pin_set.path, mode="644")
    for path in sorted(host.get_fact(FileTexts, glob=scope_glob(scope))):
        if path not in wanted_files:
            yield StringCommand("rm", "-f", shlex.quote(path))
    if change.empty:
        host.noop(f"{scope} packages are at their pinned versions and held")
        return
    logger.info(f"{host.print_prefix}{scope} packages: {change.describe()}")
    yield from change.commands()


# --- limits, sysctl, time, -----------------------------------------------------------------------


@operation()
def rdma_limits(memlock: str):  # noqa: ANN201
    """RDMA pins memory: memlock raised for logins (PAM) and for services (systemd)."""
    if not node_readable():
        yield preview("memlock limits")
        return
    yield from files.put._inner(src=StringIO(render("base/limits-rdma.conf.j2", memlock=memlock)),
                                dest=LIMITS_FILE, mode="644")
    systemd_limit = "infinity" if memlock == "unlimited" else f"{int(memlock) * 1024}"
    changed = False
    for command in files.put._inner(
        src=StringIO(render("base/systemd-rdma.conf.j2", memlock=systemd_limit)),
        dest=SYSTEMD_LIMITS_FILE, mode="644", create_remote_dir=True,
    ):
        changed = True
        yield command
    # Only a running systemd re-reads its manager defaults; elsewhere the file is for the
    # next boot.
    if changed and host.get_fact(Directory, path="/run/systemd/system"):
        yield "systemctl daemon-reexec"


def _sysctl_text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, list):
        return " ".join(str(item) for item in value)
    return " ".join(str(value).split())


@operation()
def sysctl_settings(settings: dict[str, str]):  # noqa: ANN201
    """Kernel settings persisted in sysctl.d and applied now where they differ."""
    if not node_readable():
        yield preview("sysctl settings")
        return
    yield from files.put._inner(src=StringIO(render("base/sysctl-kiln.conf.j2",
                                                    settings=settings)),
                                dest=SYSCTL_FILE, mode="644")
    current = host.get_fact(Sysctl, keys=sorted(settings))
    for key, value in sorted(settings.items()):
        if _sysctl_text(current.get(key)) != value:
            yield StringCommand("sysctl", "-q", "-w", shlex.quote(f"{key}={value}"))


@operation()
def time_sync(servers: list[str], sets_clock: bool = True):  # noqa: ANN201
    """chrony, pointed at the cluster's NTP servers only, enabled and running."""
    if not node_readable():
        yield preview("time sync (chrony)")
        return
    changed = False
    # The configuration goes first, so the daemon's first start already uses it (and, with
    # sets_clock false, never touches the clock); the package keeps it (--force-confold).
    conf = render("base/chrony.conf.j2", servers=servers)
    defaults = render("base/chrony-defaults.j2", sets_clock=sets_clock)
    for text, path in ((conf, CHRONY_CONF), (defaults, CHRONY_DEFAULTS)):
        for command in files.put._inner(src=StringIO(text), dest=path, mode="644",
                                        create_remote_dir=True):
            changed = True
            yield command
    if "chrony" not in installed_versions(host.get_fact(DebPackages)):
        changed = True
        yield f"{APT_GET} install --no-install-recommends chrony"
    service = host.get_fact(ServiceStates, units=["chrony"]).get("chrony", {})
    if service.get("enabled") != "enabled":
        yield "systemctl enable chrony"
    if changed or service.get("active") != "active":
        # service(8), as Debian's maintainer scripts do: it hands over to systemctl when
        # systemd is the running init, and runs the init script where it is not (a container,
        # a lab node). chrony.service starts chronyd as root with "ExecStart=!", which only
        # systemd itself understands.
        yield "service chrony restart"

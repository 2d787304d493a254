"""Desired MAAS states of one machine: commissioned, deployed, released, tagged.

Each function reads the machine, does nothing when it is already there (a second run of
kiln changes nothing), otherwise asks MAAS for the one transition that gets it there and
waits, with a bound, until MAAS reports the target state. Every status change is shown as it
happens ("gpu-003: Deploying → Deployed (74 s)") and returned as a `StatusChange`, so the
caller can record it in the ledger. As in Ironic, every transition is explicit: a machine
found in a state the operation does not start from is an error saying what it is in, not a
guess; a failure state MAAS puts it in is an error carrying MAAS's own status_message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from kiln.roles.maas.client import MAASClient
from kiln.roles.maas.errors import (
    ImageMismatch,
    MAASNotFound,
    MAASRequestError,
    MAASTimeout,
    MachineFailed,
    MachineStateError,
)
from kiln.roles.maas.machine import FAILURE_STATES, Machine, Status

logger = logging.getLogger("kiln.maas")

S = Status
# Where each operation starts from. Commission: MAAS's Commission action (Failed
# commissioning and Failed testing are re-commissioned: that is the retry MAAS offers).
COMMISSION_FROM = frozenset({S.NEW, S.FAILED_COMMISSIONING, S.FAILED_TESTING})
ALREADY_COMMISSIONED = frozenset({S.READY, S.ALLOCATED, S.DEPLOYING, S.DEPLOYED})
DEPLOY_FROM = frozenset({S.READY, S.ALLOCATED})
RELEASE_FROM = frozenset({
    S.ALLOCATED, S.RESERVED, S.BROKEN, S.DEPLOYING, S.DEPLOYED, S.FAILED_DEPLOYMENT,
    S.FAILED_DISK_ERASING, S.FAILED_RELEASING,
})
ALREADY_RELEASED = frozenset({S.NEW, S.READY})
# The statuses MAAS shows on the way, in order; a machine seen going back along the path
# (Deploying → Allocated: someone aborted) has left it. Statuses of one stage may come in
# either order (an erasing release shows Disk erasing, Releasing, or both).
COMMISSION_PATH = ({S.COMMISSIONING}, {S.TESTING})
DEPLOY_PATH = ({S.ALLOCATED}, {S.DEPLOYING})
RELEASE_PATH = ({S.RELEASING, S.DISK_ERASING},)


class ImageSpec(Protocol):
    """What MAAS deploys; roles.manifest.OSImage is one."""

    osystem: str
    distro_series: str
    hwe_kernel: str


@dataclass(frozen=True)
class StatusChange:
    hostname: str
    before: str
    after: str
    at: float  # epoch seconds, when kiln saw it
    elapsed: float  # seconds since kiln asked MAAS

    def line(self) -> str:
        return f"{self.hostname}: {self.before} → {self.after} ({self.elapsed:.0f} s)"


@dataclass
class Outcome:
    machine: Machine
    changed: bool
    summary: str
    changes: list[StatusChange] = field(default_factory=list)


def log_progress(line: str) -> None:
    logger.info(line)


@dataclass
class Waiter:
    """How kiln waits on MAAS: poll interval, where progress lines go, and the clocks."""

    poll_interval: float = 5.0
    progress: Callable[[str], None] = log_progress
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep

    def until(
        self,
        client: MAASClient,
        machine: Machine,
        *,
        action: str,
        target: Status,
        path: Sequence[set[Status]],
        timeout: float,
        started: float,
        changes: list[StatusChange],
    ) -> Machine:
        """Poll until `target`; a failure state, leaving `path` or the bound is an error.

        `machine` is what MAAS answered the request with; `started` is when it was sent.
        """
        stage_of = {status: number for number, stage in enumerate(path) for status in stage}
        furthest = 0
        previous = None
        while True:
            if previous is not None and machine.status_name != previous.status_name:
                change = StatusChange(machine.hostname, previous.status_name,
                                      machine.status_name, self.wall_clock(),
                                      self.clock() - started)
                changes.append(change)
                self.progress(change.line())
            if machine.status == target:
                return machine
            if machine.status in FAILURE_STATES:
                raise failed(client, machine, action)
            stage = stage_of.get(machine.status, -1)
            if stage < furthest:
                raise MachineStateError(
                    f"{machine.hostname}: MAAS {client.url} moved it to {machine.status_name} "
                    f"while kiln waited for {target_name(target)} after {action} (aborted "
                    "in MAAS?)" + (f": {machine.status_message}" if machine.status_message
                                   else "")
                )
            furthest = stage
            waited = self.clock() - started
            if waited >= timeout:
                raise MAASTimeout(
                    f"{machine.hostname}: still {machine.describe_status()} {waited:.0f} s "
                    f"after {action} (bound {timeout:.0f} s; MAAS {client.url})"
                )
            self.sleep(min(self.poll_interval, max(timeout - waited, 0.0)))
            previous = machine
            machine = client.machine(machine.system_id)

    def first(self, machine: Machine, before: Machine, started: float,
              changes: list[StatusChange]) -> None:
        """The change the request itself made (MAAS answers with the machine after it)."""
        if machine.status_name != before.status_name:
            change = StatusChange(machine.hostname, before.status_name, machine.status_name,
                                  self.wall_clock(), self.clock() - started)
            changes.append(change)
            self.progress(change.line())


def target_name(status: Status) -> str:
    return {S.READY: "Ready", S.DEPLOYED: "Deployed"}.get(status, status.name.title())


def failed(client: MAASClient, machine: Machine, action: str) -> MachineFailed:
    message = machine.status_message or "MAAS gave no status message"
    return MachineFailed(
        f"{machine.hostname}: {action} failed: MAAS {client.url} reports "
        f"{machine.status_name}: {message}",
        machine.hostname, machine.status_name, machine.status_message,
    )


def image_text(osystem: str, distro_series: str, hwe_kernel: str) -> str:
    return f"{osystem}/{distro_series}" + (f" ({hwe_kernel})" if hwe_kernel else "")


def has_image(machine: Machine, image: ImageSpec) -> bool:
    """Same osystem and series; and the same kernel where the manifest names one."""
    if (machine.osystem, machine.distro_series) != (image.osystem, image.distro_series):
        return False
    return not image.hwe_kernel or machine.hwe_kernel == image.hwe_kernel


def _begin(client: MAASClient, machine: Any, waiter: Waiter | None) -> tuple[Machine, Waiter]:
    return client.find(machine), waiter or Waiter()


def commissioned(
    client: MAASClient,
    machine: Any,
    *,
    recommission: bool = False,
    timeout: float = 1800.0,
    waiter: Waiter | None = None,
) -> Outcome:
    """Commissioned: Ready (or further along). `recommission` commissions a Ready machine
    again, as reprovisioning does after a release."""
    current, waiter = _begin(client, machine, waiter)
    starts = COMMISSION_FROM | ({S.READY} if recommission else set())
    if current.status in ALREADY_COMMISSIONED and current.status not in starts:
        return Outcome(current, False, f"{current.hostname}: already commissioned "
                                       f"({current.status_name})")
    if current.status in (S.COMMISSIONING, S.TESTING):
        return _wait(client, current, current, waiter, "commissioning", S.READY,
                     COMMISSION_PATH, timeout, changed=False)
    if current.status not in starts:
        raise _cannot(client, current, "commission", starts)
    started = waiter.clock()
    answered = client.commission(current.system_id)
    return _wait(client, current, answered, waiter, "commissioning", S.READY,
                 COMMISSION_PATH, timeout, started=started)


def deployed(
    client: MAASClient,
    machine: Any,
    image: ImageSpec,
    user_data: str | bytes | None,
    *,
    timeout: float = 2400.0,
    waiter: Waiter | None = None,
) -> Outcome:
    """Deployed with `image`. Already deployed with it: nothing is sent (no reimage on a
    second run). Deployed with another image: an error; reimaging is reprovisioning's."""
    current, waiter = _begin(client, machine, waiter)
    wanted = image_text(image.osystem, image.distro_series, image.hwe_kernel)
    if current.status in (S.DEPLOYED, S.DEPLOYING):
        if not has_image(current, image):
            have = image_text(current.osystem, current.distro_series, current.hwe_kernel)
            raise ImageMismatch(
                f"{current.hostname}: MAAS {client.url} shows it {current.status_name} with "
                f"{have}; the manifest wants {wanted}. kiln does not reimage a deployed "
                f"node on its own: reprovision it (deploy/reprovision.py --limit "
                f"{current.hostname})"
            )
        if current.status == S.DEPLOYED:
            return Outcome(current, False, f"{current.hostname}: already Deployed with {wanted}")
        return _wait(client, current, current, waiter, f"deploying {wanted}", S.DEPLOYED,
                     DEPLOY_PATH, timeout, changed=False)
    if current.status not in DEPLOY_FROM:
        hint = " (commission it first)" if current.status == S.NEW else ""
        raise _cannot(client, current, "deploy", DEPLOY_FROM, hint)
    started = waiter.clock()
    answered = client.deploy(current.system_id, osystem=image.osystem,
                             distro_series=image.distro_series,
                             hwe_kernel=image.hwe_kernel or None, user_data=user_data,
                             comment="kiln bring-up")
    return _wait(client, current, answered, waiter, f"deploying {wanted}", S.DEPLOYED,
                 DEPLOY_PATH, timeout, started=started)


def released(
    client: MAASClient,
    machine: Any,
    *,
    erase: bool = True,
    quick_erase: bool = True,
    secure_erase: bool = False,
    timeout: float = 1800.0,
    waiter: Waiter | None = None,
) -> Outcome:
    """Released back to Ready, its disks erased by default (MAAS's quick erase: the start
    and end of each drive; `secure_erase` uses the drive's own erase where it has one)."""
    current, waiter = _begin(client, machine, waiter)
    if current.status in ALREADY_RELEASED:
        return Outcome(current, False, f"{current.hostname}: already released "
                                       f"({current.status_name})")
    if current.status in (S.RELEASING, S.DISK_ERASING):
        return _wait(client, current, current, waiter, "releasing", S.READY,
                     RELEASE_PATH, timeout, changed=False)
    if current.status not in RELEASE_FROM:
        raise _cannot(client, current, "release", RELEASE_FROM)
    started = waiter.clock()
    answered = client.release(current.system_id, erase=erase, quick_erase=quick_erase,
                              secure_erase=secure_erase, comment="kiln release")
    return _wait(client, current, answered, waiter, "releasing", S.READY,
                 RELEASE_PATH, timeout, started=started)


def tagged(
    client: MAASClient,
    machine: Any,
    tag: str,
    *,
    comment: str = "managed by kiln",
    timeout: float = 60.0,
    waiter: Waiter | None = None,
) -> Outcome:
    """The machine carries `tag` (created when MAAS has no such tag)."""
    current, waiter = _begin(client, machine, waiter)
    if tag in current.tag_names:
        return Outcome(current, False, f"{current.hostname}: already tagged {tag}")
    try:
        client.tag(tag)
    except MAASNotFound:
        try:
            client.create_tag(tag, comment=comment)
        except MAASRequestError as exc:
            # Another node's run may have created it between our read and our create.
            if exc.status != 400 or "already exists" not in exc.text:
                raise
    started = waiter.clock()
    client.update_tag_nodes(tag, add=[current.system_id])
    while True:
        current = client.machine(current.system_id)
        if tag in current.tag_names:
            waiter.progress(f"{current.hostname}: tagged {tag}")
            return Outcome(current, True, f"{current.hostname}: tagged {tag}")
        if waiter.clock() - started >= timeout:
            raise MAASTimeout(f"{current.hostname}: MAAS {client.url} accepted tag {tag} "
                              f"but does not show it after {timeout:.0f} s")
        waiter.sleep(waiter.poll_interval)


def _wait(client: MAASClient, before: Machine, answered: Machine, waiter: Waiter,
          action: str, target: Status, path: Sequence[set[Status]], timeout: float, *,
          started: float | None = None, changed: bool = True) -> Outcome:
    changes: list[StatusChange] = []
    if started is None:
        started = waiter.clock()
    else:
        waiter.first(answered, before, started, changes)
    final = waiter.until(client, answered, action=action, target=target, path=path,
                         timeout=timeout, started=started, changes=changes)
    seconds = waiter.clock() - started
    return Outcome(final, changed, f"{final.hostname}: {final.status_name} after {action} "
                                   f"({seconds:.0f} s)", changes)


def _cannot(client: MAASClient, machine: Machine, action: str, starts: Iterable[Status],
            hint: str = "") -> Exception:
    if machine.status in FAILURE_STATES:
        return MachineFailed(
            f"{machine.hostname}: cannot {action}: MAAS {client.url} reports "
            f"{machine.describe_status()}{hint}",
            machine.hostname, machine.status_name, machine.status_message,
        )
    names = ", ".join(sorted(s.name.replace("_", " ").capitalize() for s in starts))
    return MachineStateError(
        f"{machine.hostname}: cannot {action} from {machine.status_name} "
        f"(MAAS {client.url}; {action} starts from {names}){hint}"
    )

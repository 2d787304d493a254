"""What every BMC client offers and shares, whichever protocol it speaks.

The typed answers (FirmwareComponent, BootOverride, LogEntry, UpdateResult, BiosValue), the
interface (`BMCClient`), the power rules both protocols follow (`PowerControl`) and the wait
for a BMC restarting itself. The Redfish and IPMI clients (roles/bmc/redfish.py,
roles/bmc/ipmi.py) build on this module; `connect` (roles/bmc/client.py) picks one of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from kiln.core.retry import RetryPolicy
from kiln.roles.bmc.errors import BMCTimeout

DEFAULT_PORTS = {"redfish": 443, "ipmi": 623}
# How long a power change may take to show in the BMC's power state before it is an error.
POWER_WAIT_SECONDS = 120.0
POLL_SECONDS = 2.0
# How long a BMC may take to restart (Manager.Reset, mc reset cold) and answer again: most
# take one to three minutes.
BMC_RESET_WAIT_SECONDS = 300.0
# How long a BMC that still answers normally right after a reset is watched for going down
# before its answer is taken as the restarted BMC's: some take seconds to start the restart.
BMC_RESET_SETTLE_SECONDS = 15.0
BOOT_DEVICES = ("pxe", "disk")

# A BIOS attribute's value as Redfish types them (String/Enumeration, Integer, Boolean).
BiosValue = str | int | bool


# -- what a BMC reports ---------------------------------------------------------------------


@dataclass(frozen=True)
class FirmwareComponent:
    """One entry of the BMC's firmware inventory."""

    id: str
    name: str
    version: str | None
    updateable: bool | None = None


@dataclass(frozen=True)
class BootOverride:
    """The boot source override the next boot will follow; `device` None: no override."""

    device: str | None  # "pxe", "disk", or the BMC's own name for another source, lower case
    persistent: bool = False  # False: the next boot only
    mode: str | None = None  # "UEFI" / "Legacy" where the BMC says


@dataclass(frozen=True)
class LogEntry:
    """One system event log entry."""

    id: str
    created: str | None  # ISO 8601; None when the BMC stamped it before its clock was set
    severity: str | None  # "OK" | "Warning" | "Critical"
    message: str


@dataclass(frozen=True)
class UpdateResult:
    """How a firmware update task ended (Completed); its messages in order."""

    task: str | None
    state: str
    messages: list[str]


class BMCClient(Protocol):
    """What kiln asks of a BMC. Every method raises a BMCError subclass naming the BMC."""

    label: str

    def power_state(self) -> str: ...

    def power_on(self, wait: float = POWER_WAIT_SECONDS) -> bool: ...

    def power_off(self, graceful: bool = False, wait: float = POWER_WAIT_SECONDS) -> bool: ...

    def power_cycle(self, wait: float = POWER_WAIT_SECONDS) -> None: ...

    def boot_override(self) -> BootOverride: ...

    def set_boot_once(self, device: str) -> None: ...

    def firmware_inventory(self) -> list[FirmwareComponent]: ...

    def bios_attributes(self) -> dict[str, BiosValue]: ...

    def update_firmware(self, component: str, image_uri: str,
                        timeout: float = 1800.0) -> UpdateResult: ...

    def event_log(self, limit: int = 1000) -> list[LogEntry]: ...

    def reset_bmc(self, wait: float = BMC_RESET_WAIT_SECONDS) -> str: ...

    def close(self) -> None: ...


# -- power, the same rules for both protocols -------------------------------------------------


class PowerControl:
    """Idempotent power on/off/cycle over a protocol's primitives.

    A subclass gives `power_state()` ("on", "off", or a transitional state) and
    `_power_action(action)` for action "on", "off", "soft" (graceful shutdown) or "cycle".
    Each change is confirmed by reading the power state until it shows, within `wait`.
    """

    label: str
    retry: RetryPolicy
    poll_interval: float = POLL_SECONDS

    def power_state(self) -> str:
        raise NotImplementedError

    def _power_action(self, action: str) -> None:
        raise NotImplementedError

    def _can_cycle(self) -> bool:
        """Whether the BMC has a one-step cycle (reset) for a machine that is on."""
        return True

    def power_on(self, wait: float = POWER_WAIT_SECONDS) -> bool:
        """Power on; False (nothing done) when it is on already or powering on."""
        if self.power_state() in ("on", "powering on"):
            return False
        self._power_action("on")
        self._wait_for_power("on", wait)
        return True

    def power_off(self, graceful: bool = False, wait: float = POWER_WAIT_SECONDS) -> bool:
        """Power off, at once or (graceful) by asking the OS to shut down; False when off."""
        if self.power_state() in ("off", "powering off"):
            return False
        self._power_action("soft" if graceful else "off")
        self._wait_for_power("off", wait)
        return True

    def power_cycle(self, wait: float = POWER_WAIT_SECONDS) -> None:
        """Off then on. A machine that is off is powered on (what a reset means to it)."""
        if self.power_state() in ("off", "powering off"):
            self.power_on(wait)
        elif self._can_cycle():
            self._power_action("cycle")
        else:
            self._power_action("off")
            self._wait_for_power("off", wait)
            self._power_action("on")
            self._wait_for_power("on", wait)

    def _wait_for_power(self, wanted: str, wait: float) -> None:
        if wait <= 0:
            return
        deadline = time.monotonic() + wait
        while True:
            seen = self.power_state()
            if seen == wanted:
                return
            if time.monotonic() >= deadline:
                raise BMCTimeout(f"{self.label}: power state is still {seen!r} {wait:g} s "
                                 f"after asking for {wanted!r}")
            self.retry.sleep(self.poll_interval)


# -- a BMC restarting itself -------------------------------------------------------------------


def wait_for_bmc_restart(label: str, probe: Callable[[], str | None], *, wait: float,
                         poll_interval: float, sleep: Callable[[float], None],
                         settle: float = BMC_RESET_SETTLE_SECONDS) -> None:
    """Wait, within `wait` seconds, until a BMC told to restart answers as a working BMC.

    `probe()` gives None when the BMC answers and says it is working, else what it shows
    instead (no answer, a 503, a state). A BMC seen not working has restarted once it works
    again; one that works throughout is taken as restarted once `settle` seconds have passed
    (a BMC can answer for a few seconds after accepting the reset). Raises BMCTimeout with
    the last thing seen.
    """
    started = time.monotonic()
    deadline = started + wait
    went_down = False
    while True:
        seen = probe()
        if seen is None and (went_down or time.monotonic() - started >= min(settle, wait)):
            return
        went_down = went_down or seen is not None
        if time.monotonic() >= deadline:
            last = seen or "it answered, but was never seen restarting"
            raise BMCTimeout(f"{label}: the BMC is not back {wait:g} s after its restart "
                             f"(last seen: {last})")
        sleep(poll_interval)

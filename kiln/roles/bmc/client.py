"""One interface to a node's BMC, whichever protocol the inventory names for it.

    from kiln.roles.bmc import connect
    bmc = connect(host.data)          # pyinfra host data, a BMC model, or a mapping of it
    bmc.power_state()                 # "on" | "off"
    bmc.power_on(); bmc.set_boot_once("pxe"); bmc.firmware_inventory()

`connect` reads the node's `kiln_bmc` (roles/inventory.py `BMC`: address, protocol
redfish|ipmi, port, verify_tls, ca_bundle, credentials) and returns a `RedfishBMC` (sushy)
or an `IpmiBMC` (ipmitool). Credentials come from roles/secrets.lookup: the entry the BMC
names (default `bmc`), environment first (KILN_BMC_USERNAME / KILN_BMC_PASSWORD), then the
0600 secrets file of group data (`kiln_secrets_file`). TLS is verified by default, against
`ca_bundle` when one is given; `verify_tls: false` is honoured and reported with a warning
naming the BMC at every connect, so a run's output always shows it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from kiln.core.errors import KilnError, pydantic_problems
from kiln.core.inventory import BMC
from kiln.core.secrets import Secret, lookup
from kiln.roles.bmc.errors import BMCError, BMCTimeout
from kiln.roles.bmc.retry import RetryPolicy

logger = logging.getLogger("kiln.bmc")

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


# -- from the inventory to a client ------------------------------------------------------------


@dataclass(frozen=True)
class BMCTarget:
    """Where a node's BMC is and how to reach it, resolved from the inventory."""

    node: str | None
    address: str
    protocol: str
    port: int
    verify: bool | str  # True, False, or the CA bundle path
    credentials: str
    cipher_suite: int | None = None  # IPMI only: ipmitool -C

    @property
    def label(self) -> str:
        where = f"{self.address}:{self.port}" if self.port != DEFAULT_PORTS[self.protocol] \
            else self.address
        node = f", node {self.node}" if self.node else ""
        return f"BMC {where} ({self.protocol}{node})"


def _get(data: Any, key: str) -> Any:
    """A key of host data (pyinfra HostData or a mapping); None when absent."""
    if isinstance(data, Mapping):
        return data.get(key)
    getter = getattr(data, "get", None)
    return getter(key) if callable(getter) else None


def _bmc_model(value: Any, node: str | None) -> tuple[BMC, int | None]:
    """The BMC model and the IPMI cipher suite from a model or its mapping."""
    if isinstance(value, BMC):
        return value, getattr(value, "cipher_suite", None)
    where = f"node {node}: kiln_bmc" if node else "kiln_bmc"
    if not isinstance(value, Mapping):
        raise BMCError(f"{where}: expected the node's BMC (address, protocol, ...), "
                       f"got {type(value).__name__}")
    fields = dict(value)
    cipher_suite = fields.get("cipher_suite")
    if "cipher_suite" not in BMC.model_fields:
        fields.pop("cipher_suite", None)  # an IPMI-only setting the model may not carry yet
    try:
        model = BMC.model_validate(fields)
    except ValidationError as exc:
        raise BMCError("\n".join(pydantic_problems(where, exc))) from None
    if cipher_suite is not None and (not isinstance(cipher_suite, int) or
                                     not 0 <= cipher_suite <= 17):
        raise BMCError(f"{where}.cipher_suite: {cipher_suite!r} is not an IPMI cipher suite "
                       "(0-17; 3 or 17 on most BMCs)")
    return model, cipher_suite


def resolve_target(bmc: Any, node: str | None = None) -> BMCTarget:
    """A BMCTarget from a BMC model, a mapping of its fields, or host data (`kiln_bmc`)."""
    if not isinstance(bmc, BMC) and _get(bmc, "address") is None:
        node = node or _get(bmc, "kiln_node")
        inner = _get(bmc, "kiln_bmc")
        if inner is None:
            raise BMCError(f"node {node or '?'}: host data has no kiln_bmc "
                           "(the inventory gives every node a bmc: address, protocol, ...)")
        bmc = inner
    model, cipher_suite = _bmc_model(bmc, node)
    verify: bool | str = True
    if not model.verify_tls:
        verify = False
    elif model.ca_bundle:
        verify = str(Path(model.ca_bundle).expanduser())
    return BMCTarget(
        node=node,
        address=model.address,
        protocol=model.protocol,
        port=model.port or DEFAULT_PORTS[model.protocol],
        verify=verify,
        credentials=model.credentials,
        cipher_suite=cipher_suite,
    )


def retry_from_data(settings: Any, target: BMCTarget) -> RetryPolicy | None:
    """Group data's `kiln_bmc_retry: {attempts, first_delay, factor, max_delay}`, if set."""
    if settings is None:
        return None
    fields = ("attempts", "first_delay", "factor", "max_delay")
    where = f"node {target.node}: kiln_bmc_retry" if target.node else "kiln_bmc_retry"
    if not isinstance(settings, Mapping) or set(settings) - set(fields):
        raise BMCError(f"{where}: expected a mapping of {', '.join(fields)}, got {settings!r}")
    try:
        return RetryPolicy(**{key: type(getattr(RetryPolicy, key))(value)
                              for key, value in settings.items()})
    except (TypeError, ValueError) as exc:
        raise BMCError(f"{where}: {exc}") from None


def credentials_for(target: BMCTarget, *, secrets_file: str | Path | None,
                    env: Mapping[str, str] | None, env_prefix: str) -> dict[str, Secret]:
    try:
        return lookup(target.credentials, ("username", "password"), env=env,
                      secrets_file=secrets_file, env_prefix=env_prefix)
    except KilnError as exc:
        raise BMCError(f"{target.label}: {exc}") from None


def connect(
    bmc: Any,
    *,
    node: str | None = None,
    secrets_file: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    env_prefix: str | None = None,
    retry: RetryPolicy | None = None,
    warn: Callable[[str], None] | None = None,
) -> BMCClient:
    """The client for a node's BMC, by the protocol the inventory names.

    `bmc` is pyinfra host data (its `kiln_bmc`, `kiln_node`, `kiln_secrets_file`,
    `kiln_secrets_env_prefix` and `kiln_bmc_retry` are used), a roles.inventory.BMC, or a
    mapping of its fields.
    Nothing is sent to the BMC until the first call.
    """
    if not isinstance(bmc, BMC) and _get(bmc, "address") is None:
        node = node or _get(bmc, "kiln_node")
        secrets_file = secrets_file or _get(bmc, "kiln_secrets_file")
        env_prefix = env_prefix or _get(bmc, "kiln_secrets_env_prefix")
    target = resolve_target(bmc, node)
    if retry is None and not isinstance(bmc, BMC):
        retry = retry_from_data(_get(bmc, "kiln_bmc_retry"), target)
    secret = credentials_for(target, secrets_file=secrets_file, env=env,
                             env_prefix=env_prefix or "KILN_")
    retry = retry or RetryPolicy()
    if target.protocol == "ipmi":
        from kiln.roles.bmc.ipmi import IpmiBMC

        return IpmiBMC(target.address, port=target.port, username=secret["username"],
                       password=secret["password"], label=target.label, retry=retry,
                       cipher_suite=target.cipher_suite, credentials_entry=target.credentials)
    from kiln.roles.bmc.redfish import RedfishBMC

    if target.verify is False:
        (warn or logger.warning)(
            f"{target.label}: TLS certificate verification is OFF (verify_tls: false in the "
            "inventory); anyone on the path can read its credentials"
        )
    host = f"[{target.address}]" if ":" in target.address else target.address
    return RedfishBMC(f"https://{host}:{target.port}", username=secret["username"],
                      password=secret["password"], verify=target.verify, label=target.label,
                      retry=retry, credentials_entry=target.credentials)

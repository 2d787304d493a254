"""A BMC over Redfish, through sushy (the OpenStack Redfish library Ironic uses).

sushy speaks the protocol: sessions or basic auth, the service root, ComputerSystem.Reset
with the reset types the system lists, boot source override PATCHes (with ETags and the
`@Redfish.Settings` object where a BMC wants one), UpdateService.SimpleUpdate and its task
monitor. What kiln adds:

- Basic auth, not a Redfish session: each kiln call is a handful of requests, and a session
  left behind by a run that was killed stays open on the BMC until it times out (iLO and
  iDRAC cap open sessions).
- One retry policy (core/retry.py, with the BMC's rules in roles/bmc/retry.py) instead of
  sushy's own: the connector here makes a single attempt per request and every failure is
  mapped to kiln's errors, so a transient failure is retried with backoff and a bound (the
  BMC's Retry-After honoured), a 401/403 or a TLS failure never.
- Reset types chosen from what the system offers (`choose_reset_types`).
- The task monitor polled by kiln (`_wait_for_task`): bounded, Retry-After honoured, a task
  ending in Exception is an error carrying the task's own messages.
- LogService / LogEntry resources, which sushy does not have, as sushy resource classes.
"""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import urlsplit

import requests
import sushy
from sushy import exceptions as sushy_exc
from sushy.connector import Connector
from sushy.resources import base
from sushy.resources import constants as res_cons
from sushy.resources.system import constants as sys_cons
from sushy.resources.system.bios import Bios
from sushy.resources.taskservice import constants as task_cons
from sushy.resources.taskservice.task import Task
from sushy.resources.updateservice import constants as up_cons
from sushy.taskmonitor import TaskMonitor
from urllib3.exceptions import NewConnectionError

from kiln.core.retry import RetryPolicy, retry_after_seconds
from kiln.core.secrets import MASK, Secret
from kiln.roles.bmc.errors import (
    BMCAuthError,
    BMCError,
    BMCTaskFailed,
    BMCTimeout,
    BMCTLSError,
    BMCUnsupported,
    TransientBMCError,
)
from kiln.roles.bmc.interface import (
    BMC_RESET_SETTLE_SECONDS,
    BMC_RESET_WAIT_SECONDS,
    BOOT_DEVICES,
    POLL_SECONDS,
    BiosValue,
    BootOverride,
    FirmwareComponent,
    LogEntry,
    PowerControl,
    UpdateResult,
    wait_for_bmc_restart,
)
from kiln.roles.bmc.retry import call_bmc

# sushy logs, unformatted and at warning level, what kiln's errors then say with the BMC
# named; Python's last-resort handler would print both.
logging.getLogger("sushy").setLevel(logging.CRITICAL)

POWER_STATES = {
    res_cons.PowerState.ON: "on",
    res_cons.PowerState.OFF: "off",
    res_cons.PowerState.POWERING_ON: "powering on",
    res_cons.PowerState.POWERING_OFF: "powering off",
}
BOOT_TARGETS = {"pxe": sys_cons.BootSource.PXE, "disk": sys_cons.BootSource.HDD}
BOOT_NAMES = {sys_cons.BootSource.PXE: "pxe", sys_cons.BootSource.HDD: "disk"}
FAILED_TASK_STATES = {task_cons.TaskState.EXCEPTION, task_cons.TaskState.KILLED,
                      task_cons.TaskState.CANCELLED, task_cons.TaskState.INTERRUPTED}
ENDED_TASK_STATES = FAILED_TASK_STATES | {task_cons.TaskState.COMPLETED}
# 502/503/504: the server (or a proxy in front) says it did not act on the request.
NOT_APPLIED_STATUSES = {502, 503, 504}
MAX_LOG_PAGES = 100
# Manager.Reset types that restart the BMC, in the order preferred: a graceful restart lets
# the BMC finish writing what it holds (its settings, an image it is still committing).
MANAGER_RESTARTS = ("GracefulRestart", "ForceRestart")


def choose_reset_types(action: str, allowed: set[str]) -> list[str]:
    """The ComputerSystem.Reset type(s) that carry out `action` on a system offering `allowed`.

    on: On, else ForceOn, else PushPowerButton (the machine is off, so a press turns it on).
    off: ForceOff. soft: GracefulShutdown. cycle: PowerCycle, else ForceRestart, else
    ForceOff then On. Raises BMCUnsupported (without the BMC's name; the caller adds it).
    """
    preferences = {
        "on": [["On"], ["ForceOn"], ["PushPowerButton"]],
        "off": [["ForceOff"]],
        "soft": [["GracefulShutdown"]],
        "cycle": [["PowerCycle"], ["ForceRestart"], ["ForceOff", "On"], ["ForceOff", "ForceOn"]],
    }
    if action not in preferences:
        raise ValueError(f"unknown power action {action!r}")
    for sequence in preferences[action]:
        if all(reset in allowed for reset in sequence):
            return sequence
    wanted = " or ".join("+".join(sequence) for sequence in preferences[action])
    raise BMCUnsupported(f"power {action}: the system offers no {wanted} reset "
                         f"(it offers {', '.join(sorted(allowed)) or 'none'})")


# -- resources sushy does not have ---------------------------------------------------------


class LogEntryPage(base.ResourceBase):
    """One page of a LogEntryCollection; members may be links or whole entries."""

    members = base.Field("Members", default=[])
    count = base.Field("Members@odata.count")
    next_link = base.Field("Members@odata.nextLink")
    odata_next_link = base.Field("@odata.nextLink")


class RedfishLogEntry(base.ResourceBase):
    identity = base.Field("Id", required=True)
    name = base.Field("Name")
    created = base.Field("Created")
    severity = base.Field("Severity")
    message = base.Field("Message")
    message_id = base.Field("MessageId")
    entry_type = base.Field("EntryType")


class LogService(base.ResourceBase):
    identity = base.Field("Id", required=True)
    name = base.Field("Name")
    log_entry_type = base.Field("LogEntryType")
    service_enabled = base.Field("ServiceEnabled")
    entries_path = base.Field(["Entries", "@odata.id"])


class LogServiceCollection(base.ResourceCollectionBase):
    @property
    def _resource_type(self) -> type:
        return LogService


class SingleAttemptConnector(Connector):
    """sushy's connector making one attempt per request: retries are kiln's policy's."""

    def _op(self, method: str, path: str = "", data: Any = None, headers: Any = None,
            blocking: bool = False, timeout: Any = None, server_side_retries_left: Any = None,
            allow_reauth: bool = True, **kwargs: Any) -> Any:
        if server_side_retries_left is None:
            server_side_retries_left = 0
        return super()._op(method, path, data=data, headers=headers, blocking=blocking,
                           timeout=timeout, server_side_retries_left=server_side_retries_left,
                           allow_reauth=allow_reauth, **kwargs)


def _cause(exc: BaseException) -> BaseException | None:
    """The requests exception sushy's ConnectionError was raised from."""
    return exc.__cause__ or exc.__context__


def _never_sent(error: BaseException | None) -> bool:
    """True when the request cannot have reached the server (no connection was made)."""
    if isinstance(error, requests.exceptions.ConnectTimeout):
        return True
    if isinstance(error, requests.exceptions.ConnectionError):
        reason = error.args[0] if error.args else None
        reason = getattr(reason, "reason", reason)
        return isinstance(reason, NewConnectionError | ConnectionRefusedError)
    return False


def _connection_failure(error: BaseException | None) -> str:
    """A short account of a failed connection: the OS's reason, not urllib3's layers."""
    if isinstance(error, requests.exceptions.ConnectTimeout):
        return "connect timeout"
    if isinstance(error, requests.exceptions.ReadTimeout):
        return "no answer within the read timeout"
    reason = error.args[0] if error is not None and error.args else error
    reason = getattr(reason, "reason", reason)
    text = str(reason) if reason is not None else "connection failed"
    # "HTTPSConnection(host=..., port=...): Failed to establish a new connection: [Errno 111]
    # Connection refused" -> "[Errno 111] Connection refused"
    return text.rsplit(": ", 1)[-1] if "Failed to establish" in text else text


class RedfishBMC(PowerControl):
    """A BMC reached with sushy; one System behind it (the node)."""

    def __init__(
        self,
        url: str,
        *,
        username: Secret | str,
        password: Secret | str,
        verify: bool | str = True,
        label: str | None = None,
        retry: RetryPolicy | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        poll_interval: float = POLL_SECONDS,
        system_id: str | None = None,
        credentials_entry: str = "bmc",
    ):
        # The BMC's base URL; a Redfish root URL given instead is cut back to it.
        self.url = url.rstrip("/").removesuffix("/redfish/v1")
        self.verify = verify
        self.label = label or f"BMC {urlsplit(url).hostname} (redfish)"
        self.retry = retry or RetryPolicy()
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.poll_interval = poll_interval
        self.system_id = system_id
        self.credentials_entry = credentials_entry
        self._username = username.reveal() if isinstance(username, Secret) else username
        self._password = password.reveal() if isinstance(password, Secret) else password
        self._root: sushy.Sushy | None = None
        self._last_retry_after: str | None = None  # of the BMC's latest answer

    # -- one place where sushy's exceptions become kiln's -----------------------------------

    def _scrub(self, text: str) -> str:
        return text.replace(self._password, MASK) if self._password else text

    def _translate(self, exc: Exception, what: str) -> BMCError:
        text = self._scrub(str(exc))
        if isinstance(exc, sushy_exc.AccessError):
            return BMCAuthError(
                f"{self.label}: the BMC rejected the credentials (user {self._username!r} of "
                f"entry {self.credentials_entry!r}): HTTP {exc.status_code} on {what}; "
                "not retried"
            )
        if isinstance(exc, sushy_exc.ServerSideError):
            return TransientBMCError(
                f"HTTP {exc.status_code}: {text}",
                certainly_not_applied=exc.status_code in NOT_APPLIED_STATUSES,
                retry_after=self._last_retry_after,
            )
        if isinstance(exc, sushy_exc.ConnectionError):
            cause = _cause(exc)
            if isinstance(cause, requests.exceptions.SSLError):
                where = self.verify if isinstance(self.verify, str) else "the system's CAs"
                return BMCTLSError(f"{self.label}: TLS verification failed ({where}) on "
                                   f"{what}: {self._scrub(str(cause))}")
            return TransientBMCError(f"{_connection_failure(cause)} ({what})",
                                     certainly_not_applied=_never_sent(cause))
        if isinstance(exc, sushy_exc.InvalidParameterValueError | sushy_exc.MissingActionError):
            return BMCUnsupported(f"{self.label}: {what}: {text}")
        if isinstance(exc, sushy_exc.ResourceNotFoundError):
            return BMCError(f"{self.label}: {what}: {text} (the BMC links it but has none)")
        return BMCError(f"{self.label}: {what}: {text}")

    def _call(self, what: str, action: Any, write: bool = False) -> Any:
        def attempt() -> Any:
            try:
                return action()
            except BMCError:
                raise
            except (sushy_exc.SushyError, ValueError) as exc:
                raise self._translate(exc, what) from None

        return call_bmc(self.retry, attempt, bmc=self.label, what=what, write=write)

    # -- sushy objects, fresh on every call: facts are read now, not remembered ------------

    def _sushy(self) -> sushy.Sushy:
        if self._root is None:
            connector = SingleAttemptConnector(
                self.url, verify=self.verify, server_side_retries=1,
                server_side_retries_delay=0, default_request_timeout=self.read_timeout,
                connect_timeout=self.connect_timeout, response_callback=self._answered,
            )
            self._root = sushy.Sushy(
                self.url, auth=sushy.auth.BasicAuth(self._username, self._password),
                connector=connector, verify=self.verify,
            )
        return self._root

    def _answered(self, response: requests.Response) -> None:
        # sushy's HTTPError keeps no headers: a 503's Retry-After is read here, as it arrives.
        self._last_retry_after = response.headers.get("Retry-After")

    def _system(self) -> Any:
        root = self._sushy()
        if self.system_id:
            return root.get_system(self.system_id)
        members = root.get_system_collection().members_identities
        if len(members) != 1:
            raise BMCUnsupported(f"{self.label}: the BMC has {len(members)} systems "
                                 f"({', '.join(members) or 'none'}); name one (system_id)")
        return root.get_system(members[0])

    def system_path(self) -> str:
        return self._call("read the system", lambda: self._system().path)

    # -- power ---------------------------------------------------------------------------

    def power_state(self) -> str:
        state = self._call("read the power state", lambda: self._system().power_state)
        if state is None:
            raise BMCError(f"{self.label}: the system reports no PowerState")
        return POWER_STATES.get(state, str(state.value).lower())

    def allowed_reset_types(self) -> set[str]:
        return self._call("read the reset types", lambda: {
            reset.value for reset in self._system().get_allowed_reset_system_values()
        })

    def _reset_plan(self, action: str) -> list[str]:
        try:
            return choose_reset_types(action, self.allowed_reset_types())
        except BMCUnsupported as exc:
            raise BMCUnsupported(f"{self.label}: {exc}") from None

    def _can_cycle(self) -> bool:
        return len(self._reset_plan("cycle")) == 1

    def _power_action(self, action: str) -> None:
        plan = self._reset_plan(action)
        for step, reset in enumerate(plan):
            if step:
                self._wait_for_power("off", 120.0)
            self._call(f"reset ({reset})",
                       lambda r=reset: self._system().reset_system(res_cons.ResetType(r)),
                       write=True)

    # -- boot ----------------------------------------------------------------------------

    def boot_override(self) -> BootOverride:
        boot = self._call("read the boot override", lambda: self._system().boot)
        if boot is None or boot.enabled in (None, sys_cons.BootSourceOverrideEnabled.DISABLED):
            return BootOverride(device=None)
        if boot.target in (None, sys_cons.BootSource.NONE):
            return BootOverride(device=None)
        device = BOOT_NAMES.get(boot.target, str(boot.target.value).lower())
        mode = boot.mode.value if boot.mode is not None else None
        persistent = boot.enabled == sys_cons.BootSourceOverrideEnabled.CONTINUOUS
        return BootOverride(device=device, persistent=persistent, mode=mode)

    def set_boot_once(self, device: str) -> None:
        if device not in BOOT_DEVICES:
            raise BMCError(f"{self.label}: boot device {device!r} is not one of "
                           f"{', '.join(BOOT_DEVICES)}")
        self._call(
            f"set a one-time boot override to {BOOT_TARGETS[device].value}",
            lambda: self._system().set_system_boot_options(
                target=BOOT_TARGETS[device], enabled=sys_cons.BootSourceOverrideEnabled.ONCE),
            write=True,
        )

    # -- firmware ------------------------------------------------------------------------

    def _inventory_members(self) -> list[Any]:
        return self._sushy().get_update_service().firmware_inventory.get_members()

    def firmware_inventory(self) -> list[FirmwareComponent]:
        members = self._call("read the firmware inventory", self._inventory_members)
        return [FirmwareComponent(id=item.identity, name=item.name, version=item.version,
                                  updateable=item.updateable) for item in members]

    def update_firmware(self, component: str, image_uri: str,
                        timeout: float = 1800.0) -> UpdateResult:
        """SimpleUpdate of the inventory item `component` (its Id) from `image_uri`, and
        the task polled until it ends or `timeout` runs out. Activation (a reset) is the
        caller's: most components run the new image only after one."""
        scheme = urlsplit(image_uri).scheme.upper()
        try:
            protocol = up_cons.UpdateTransferProtocolType(scheme)
        except ValueError:
            raise BMCError(f"{self.label}: image URI {image_uri!r}: the scheme must be one of "
                           "http, https") from None
        members = self._call("read the firmware inventory", self._inventory_members)
        by_id = {item.identity: item for item in members}
        if component not in by_id:
            raise BMCUnsupported(f"{self.label}: no firmware inventory item {component!r} "
                                 f"(items: {', '.join(by_id) or 'none'})")
        target = by_id[component].path
        monitor = self._call(
            f"SimpleUpdate {component} from {image_uri}",
            lambda: self._sushy().get_update_service().simple_update(
                image_uri, targets=[target], transfer_protocol=protocol),
            write=True,
        )
        return self._wait_for_task(monitor, f"SimpleUpdate {component}", timeout)

    def _wait_for_task(self, monitor: TaskMonitor, what: str, timeout: float) -> UpdateResult:
        deadline = time.monotonic() + timeout
        task_uri: str | None = None
        while True:
            if monitor.task is not None:
                task_uri = monitor.task.json.get("@odata.id") or task_uri
            if not monitor.is_processing:
                break
            if monitor.task is not None and monitor.task.task_state in ENDED_TASK_STATES:
                break  # a monitor answering 202 with a task that has ended: done
            if time.monotonic() >= deadline:
                percent = monitor.task.percent_complete if monitor.task is not None else None
                done = f", {percent}% done" if percent is not None else ""
                raise BMCTimeout(f"{self.label}: {what}: the task "
                                 f"{task_uri or monitor.task_monitor_uri} is still running "
                                 f"after {timeout:g} s{done}")
            self.retry.sleep(self._retry_after(monitor))
            self._call(f"poll the {what} task", monitor.refresh)
        task = self._call(f"read the {what} task",
                          lambda: self._final_task(monitor, task_uri))
        if task is None:  # the monitor answered without a Task: the action is done
            return UpdateResult(task=task_uri, state="Completed", messages=[])
        messages = [m.message or m.message_id or "" for m in task.messages or []]
        state = task.task_state.value if task.task_state is not None else "unknown"
        if task.task_state in FAILED_TASK_STATES:
            said = "; ".join(m for m in messages if m) or "the task gave no message"
            raise BMCTaskFailed(f"{self.label}: {what}: task {task.path} ended {state}: {said}")
        if task.task_state != task_cons.TaskState.COMPLETED:
            raise BMCError(f"{self.label}: {what}: task {task.path} stopped in state {state}")
        return UpdateResult(task=task.path, state=state, messages=messages)

    def _retry_after(self, monitor: TaskMonitor) -> float:
        header = monitor.response.headers.get("Retry-After") if monitor.response else None
        asked = retry_after_seconds(header)  # seconds or an HTTP date; None: not given
        return min(self.poll_interval if asked is None else asked, 30.0)

    def _final_task(self, monitor: TaskMonitor, task_uri: str | None) -> Task | None:
        response = monitor.response
        body = response.json() if response is not None and response.content else {}
        root = self._sushy()
        if isinstance(body, dict) and body.get("TaskState"):
            path = body.get("@odata.id") or monitor.task_monitor_uri
            return Task(root._conn, path, redfish_version=root.redfish_version, json_doc=body)
        if task_uri:
            return Task(root._conn, task_uri, redfish_version=root.redfish_version)
        return None

    # -- BIOS ----------------------------------------------------------------------------

    def _bios(self) -> Bios:
        """The system's Bios resource (sushy's); BMCUnsupported when the BMC has none."""
        system = self._system()
        try:
            return system.bios
        except sushy_exc.MissingAttributeError:
            raise BMCUnsupported(f"{self.label}: the system {system.path} links no Bios "
                                 "resource: this BMC offers no BIOS attributes over "
                                 "Redfish") from None
        except sushy_exc.ResourceNotFoundError as exc:
            raise BMCUnsupported(f"{self.label}: the system {system.path} links a Bios "
                                 f"resource, but the BMC has none: {self._scrub(str(exc))}"
                                 ) from None

    def bios_attributes(self) -> dict[str, BiosValue]:
        """The BIOS attributes in effect (the Bios resource's Attributes), as the BMC names
        and types them. Settings pending for the next reset (Bios/Settings) are not here."""
        bios = self._call("read the BIOS attributes", self._bios)
        attributes = bios.attributes
        if not isinstance(attributes, dict):
            raise BMCError(f"{self.label}: the Bios resource {bios.path} has no Attributes")
        return dict(attributes)

    # -- the BMC itself ---------------------------------------------------------------------

    def _manager(self) -> Any:
        """The Manager serving the system: the only one, else the one whose
        ManagerForServers links the system."""
        root = self._sushy()
        members = root.get_manager_collection().members_identities
        if len(members) == 1:
            return root.get_manager(members[0])
        system = self._system().path
        for member in members:
            manager = root.get_manager(member)
            servers = (manager.json.get("Links") or {}).get("ManagerForServers") or []
            if any(link.get("@odata.id", "").rstrip("/") == system.rstrip("/")
                   for link in servers if isinstance(link, dict)):
                return manager
        raise BMCUnsupported(f"{self.label}: none of the {len(members)} managers "
                             f"({', '.join(members) or 'none'}) manages {system}")

    def manager_reset_types(self) -> set[str]:
        return self._call("read the manager's reset types", lambda: {
            reset.value for reset in self._manager().get_allowed_reset_manager_values()
        })

    def reset_bmc(self, wait: float = BMC_RESET_WAIT_SECONDS,
                  settle: float = BMC_RESET_SETTLE_SECONDS) -> str:
        """Restart the BMC (Manager.Reset: GracefulRestart if offered, else ForceRestart),
        then wait until its service root answers and the Manager reports Enabled/OK.
        Returns the reset type sent."""
        offered = self.manager_reset_types()
        chosen = next((reset for reset in MANAGER_RESTARTS if reset in offered), None)
        if chosen is None:
            raise BMCUnsupported(f"{self.label}: the manager offers no "
                                 f"{' or '.join(MANAGER_RESTARTS)} reset (it offers "
                                 f"{', '.join(sorted(offered)) or 'none'})")
        self._call(f"Manager.Reset ({chosen})",
                   lambda: self._manager().reset_manager(res_cons.ResetType(chosen)),
                   write=True)
        wait_for_bmc_restart(self.label, self._manager_health, wait=wait,
                             poll_interval=self.poll_interval, sleep=self.retry.sleep,
                             settle=settle)
        return chosen

    def _manager_health(self) -> str | None:
        """None when the service root answers and the Manager says Enabled/OK; else what
        was seen. One attempt, no retries: the wait around it is the retry."""
        try:
            root = self._sushy()
            root.refresh(force=True)  # the service root, read again
            status = self._manager().json.get("Status") or {}
        except sushy_exc.AccessError as exc:
            raise self._translate(exc, "read the manager after its restart") from None
        except (sushy_exc.SushyError, ValueError) as exc:
            return str(self._translate(exc, "read the manager"))
        state, health = status.get("State"), status.get("Health")
        if (state, health) == ("Enabled", "OK"):
            return None
        return f"Manager Status State {state!r}, Health {health!r}"

    # -- system event log ----------------------------------------------------------------

    def _log_services(self) -> list[LogService]:
        """The system's log services, then its managers' (DMTF: Systems/*/LogServices and
        Managers/*/LogServices)."""
        system = self._system()
        root = self._sushy()
        try:
            managers = system.managers
        except sushy_exc.MissingAttributeError:
            managers = []
        paths = []
        for resource in [system, *managers]:
            link = (resource.json.get("LogServices") or {}).get("@odata.id")
            if link:
                paths.append(link)
        services, missing = [], []
        for path in paths:
            try:
                collection = LogServiceCollection(root._conn, path,
                                                  redfish_version=root.redfish_version)
            except sushy_exc.ResourceNotFoundError:
                missing.append(path)  # linked, yet absent: look at the next one
                continue
            services += collection.get_members()
        if not services:
            detail = f" ({', '.join(missing)} linked but not found)" if missing else ""
            raise BMCUnsupported(f"{self.label}: the BMC offers no log service{detail}")
        return services

    def _read_entries(self, service: LogService, limit: int) -> list[RedfishLogEntry]:
        root = self._sushy()
        entries: list[RedfishLogEntry] = []
        path, seen = service.entries_path, set()
        while path and path not in seen and len(seen) < MAX_LOG_PAGES:
            seen.add(path)
            page = LogEntryPage(root._conn, path, redfish_version=root.redfish_version)
            for member in page.members:
                link = member.get("@odata.id")
                if "Id" in member:  # expanded in the collection, as most BMCs send them
                    entries.append(RedfishLogEntry(root._conn, link, json_doc=member))
                elif link:
                    entries.append(RedfishLogEntry(root._conn, link))
            # Members@odata.count is the total over all pages: no more pages once reached.
            if page.count is not None and len(entries) >= page.count:
                break
            path = page.next_link or page.odata_next_link
        return entries[-limit:]

    def log_service(self) -> LogService:
        """The system event log: a service named SEL, or whose LogEntryType is SEL, else
        the system's first log service."""
        services = self._call("read the log services", self._log_services)
        for service in services:
            if (service.identity or "").upper() == "SEL" or service.log_entry_type == "SEL":
                return service
        return services[0]

    def event_log(self, limit: int = 1000) -> list[LogEntry]:
        service = self.log_service()
        entries = self._call(f"read log {service.path}",
                             lambda: self._read_entries(service, limit))
        return [LogEntry(id=entry.identity, created=entry.created, severity=entry.severity,
                         message=entry.message or entry.message_id or entry.name or "")
                for entry in entries]

    def close(self) -> None:
        if self._root is not None:
            self._root._conn.close()
            self._root = None

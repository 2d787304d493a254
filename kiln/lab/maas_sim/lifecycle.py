"""The machine lifecycle: MAAS's actions, their checks, and the timed work behind them.

Every action first checks what MAAS checks (and refuses with MAAS's status code and text),
changes the status at once as MAAS does in the request's transaction, and leaves the slow
part to a worker thread, as MAAS leaves it to its power workflows and to the machine's own
boot: power the machine through its BMC (power.py), let it PXE boot what the simulator put
on offer (lab/netboot.py: a commissioning or deploy request), wait for what that boot reports
(the netboot result, MAAS's cloud-init/commissioning signals), and finish the transition.
Status messages move through MAAS's own event texts ("Performing PXE boot", "Loading
ephemeral", "Installing OS", ...) with `Timing.step` seconds between them, so a client sees a
transition take time, and polls.

Transitions (status names are MAAS's):

    commission  New | Ready | Failed commissioning | Broken -> Commissioning
                -> Ready (hardware inventoried, powered off) | Failed commissioning
    deploy      Ready (allocated on the way) | Allocated -> Deploying
                -> Deployed | Failed deployment (install failed, or the deadline passed)
    release     Allocated | Deployed | Deploying | Failed deployment | Broken | ...
                -> Releasing (power off) -> Ready;  with erase: -> Disk erasing -> Ready
    abort       Commissioning -> New;  Deploying -> Allocated;  Disk erasing -> Failed disk
                erasing (each after powering the machine off)
    mark_broken any status of a machine the user owns -> Broken (a releasable one is powered
                off first);  mark_fixed  Broken -> Ready (or Deployed, if it was)

A power action the BMC refuses reverts the status as MAAS does ("Unable to power control
the node. Please check power credentials."). Monitored statuses have a deadline
(`status_expires`); past it the machine is marked failed with MAAS's timeout message.

Deploy needs no separate allocate: MAAS's deploy allocates a Ready machine to the caller
itself (maasserver/api/machines.py, MachineHandler.deploy); `op=allocate` is offered too.
"""

from __future__ import annotations

import base64
import binascii
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from kiln.lab.maas_sim.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    Unavailable,
    ValidationFailed,
    invalid_choice,
)
from kiln.lab.maas_sim.machines import API_USER, Machine
from kiln.lab.maas_sim.power import PowerDriver, PowerError, PowerFatalError
from kiln.lab.maas_sim.status import (
    ABORTABLE,
    ALREADY_RELEASED,
    COMMISSION_FROM,
    MONITORED,
    RELEASABLE,
    SCRIPT_ABORTED,
    SCRIPT_FAILED,
    SCRIPT_PASSED,
    SCRIPT_RUNNING,
    NodeStatus,
    status_name,
)
from kiln.lab.maas_sim.store import Store

Log = Callable[[str], None]
INSTALL_FAILED = "Installation failed (refer to the installation log for more information)."


class Netboot(Protocol):
    """The PXE side (lab/netboot.py's functions)."""

    def request(self, lab: Path, node: str, action: dict[str, Any]) -> None: ...

    def result(self, lab: Path, node: str) -> dict[str, Any] | None: ...

    def cancel(self, lab: Path, node: str) -> None: ...


@dataclass(frozen=True)
class Timing:
    """How long things take, in seconds. MAAS's own deadlines are 20 min (commissioning),
    40 min (deploying) and 5 min (releasing); a lab machine is faster."""

    step: float = 2.0  # between status messages of a transition
    poll: float = 0.5  # between looks at the netboot result
    commission_timeout: float = 600.0
    deploy_timeout: float = 900.0
    release_timeout: float = 300.0
    erase: float = 5.0  # a quick erase, when the lab has no erase environment to boot
    # MAAS's power driver retries a power change with these pauses, checking the power
    # state after each (provisioningserver DEFAULT_WAITING_POLICY).
    power_waits: tuple[float, ...] = (1, 2, 2, 4, 6, 8, 12)
    # ipmitool's -R for each IPMI command (with -N 1: a 1 s answer timeout). Against a BMC
    # that does not answer, one command takes about 12 s at 3 retries, about 2 s at 1.
    ipmi_retries: int = 3


@dataclass(frozen=True)
class Image:
    """A boot image the simulated MAAS has: the lab SKU's pinned OS."""

    osystem: str
    distro_series: str
    hwe_kernel: str


def _truthy(field_name: str, value: str | None, default: bool = False) -> bool:
    """formencode's StringBool, which MAAS parses boolean parameters with."""
    if value is None or value == "":
        return default
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes", "on", "y", "t"):
        return True
    if lowered in ("false", "0", "no", "off", "n", "f"):
        return False
    raise ValidationFailed({field_name: ["Value should be 'true' or 'false'"]})


def user_data_text(user_data: str | None) -> str:
    """What the machine's metadata service serves: base64 is decoded, anything else as is
    (metadataserver's prepare_user_data)."""
    if not user_data:
        return ""
    raw = user_data.encode()
    for candidate in (raw, b"".join(raw.split())):
        try:
            decoded = base64.b64decode(candidate, validate=True)
        except (binascii.Error, ValueError):
            continue
        if base64.b64encode(decoded) == candidate:
            return decoded.decode("utf-8", errors="replace")
    return user_data


def ssh_keys_of(user_data: str) -> list[str]:
    """The SSH keys a cloud-config user_data installs (ssh_authorized_keys, top level and per
    user); none for a script or other content, as cloud-init would install none from it."""
    if not user_data.startswith("#cloud-config"):
        return []
    try:
        document = yaml.safe_load(user_data)
    except yaml.YAMLError:
        return []
    if not isinstance(document, dict):
        return []
    keys: list[str] = []
    sources = [document] + [u for u in document.get("users") or [] if isinstance(u, dict)]
    for source in sources:
        for key in source.get("ssh_authorized_keys") or []:
            if isinstance(key, str) and key.strip() and key.strip() not in keys:
                keys.append(key.strip())
    return keys


@dataclass
class _Operation:
    """The slow part of one action on one machine; a newer action or an abort cancels it."""

    name: str
    cancelled: threading.Event = field(default_factory=threading.Event)


class _Cancelled(Exception):
    pass


class Lifecycle:
    def __init__(
        self,
        lab: Path,
        store: Store,
        netboot: Netboot,
        power: Callable[[Machine], PowerDriver],
        image: Image,
        timing: Timing = Timing(),
        log: Log = print,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.lab = Path(lab)
        self.store = store
        self.netboot = netboot
        self._power = power
        self.image = image
        self.timing = timing
        self.log = log
        self.clock = clock
        self._operations: dict[str, _Operation] = {}
        self._ops_lock = threading.Lock()
        self.threads: list[threading.Thread] = []

    # -- lookups ---------------------------------------------------------------------------

    def machine(self, system_id: str) -> Machine:
        machine = self.store.machines.get(system_id)
        if machine is None:
            raise NotFound("No Machine matches the given query.")
        return machine

    # -- commission ------------------------------------------------------------------------

    def commission(self, system_id: str, params: dict[str, str]) -> Machine:
        for flag in ("enable_ssh", "skip_bmc_config", "skip_networking", "skip_storage"):
            _truthy(flag, params.get(flag))
        with self.store.changing():
            machine = self.machine(system_id)
            if machine.node_status not in COMMISSION_FROM:
                raise ValidationFailed({"__all__": [
                    "Commission is not available because of the current state of the node."
                ]})
            before = machine.node_status
            machine.previous_status = before
            machine.owner = None
            self._enter(machine, NodeStatus.COMMISSIONING, "Commissioning",
                        self.timing.commission_timeout)
            machine.commissioning_status = SCRIPT_RUNNING
            machine.commissioning_result_id = (machine.commissioning_result_id or 0) + 1
            self._start(machine, "commission", self._commissioning, before, False)
            return machine

    def _commissioning(self, machine: Machine, op: _Operation, before: NodeStatus,
                       resume: bool) -> None:
        name = machine.hostname
        if not resume:
            self.netboot.request(self.lab, name, {"action": "commission"})
            if not self._power_on(machine, op, pxe=True, revert_to=before,
                                  action="commission"):
                return
            for message in ("Performing PXE boot", "Loading ephemeral", "Gathering information"):
                self._message(machine, op, message)
        result = self._await_result(machine, op, "commission")
        if result is None:
            self._timed_out(machine, op)
        elif result.get("status") == "ok":
            self._power_off_quietly(machine, op)
            hardware = result.get("hardware") or {}
            with self._changing(machine, op):
                machine.hardware = hardware
                machine.cpu_count = int(hardware.get("cpu_count", 0))
                machine.memory = int(hardware.get("memory", 0))
                machine.architecture = hardware.get("architecture") or machine.architecture
                machine.commissioning_status = SCRIPT_PASSED
                self._leave(machine, NodeStatus.READY, "Ready")
        else:
            self.log(f"{name}: commissioning failed: {result.get('error', 'no reason given')}")
            self._power_off_quietly(machine, op)
            with self._changing(machine, op):
                machine.commissioning_status = SCRIPT_FAILED
                self._leave(machine, NodeStatus.FAILED_COMMISSIONING, "Failed commissioning")

    # -- allocate and deploy ---------------------------------------------------------------

    def allocate(self, params: dict[str, list[str]]) -> Machine:
        supported = {"system_id", "name", "tags", "not_tags", "agent_name", "comment",
                     "dry_run", "cpu_count", "mem"}
        unsupported = sorted(set(params) - supported)
        if unsupported:
            raise BadRequest(
                f"The MAAS simulator does not implement the allocate constraint(s) "
                f"{', '.join(unsupported)}"
            )
        one = {k: v[-1] for k, v in params.items() if v}
        dry_run = _truthy("dry_run", one.get("dry_run"))
        with self.store.changing():
            for machine in self.store.ordered():
                if self._matches(machine, params, one):
                    if not dry_run:
                        machine.owner = API_USER
                        machine.agent_name = one.get("agent_name", "")
                        machine.previous_status = machine.status
                        machine.status = NodeStatus.ALLOCATED
                    return machine
            if not [k for k in params if k not in ("agent_name", "comment", "dry_run")]:
                raise Conflict("No machine available.")
            if "system_id" in one:
                raise Conflict(f"No machine with system ID {one['system_id']} available.")
            given = sorted((k, v) for k, v in params.items())
            resolved = " ".join(f"{k}={','.join(v)}" for k, v in given)
            raise Conflict(
                f'No available machine matches constraints: {given} (resolved to "{resolved}")'
            )

    def _matches(self, machine: Machine, params: dict[str, list[str]], one: dict[str, str],
                 ) -> bool:
        if machine.node_status != NodeStatus.READY or machine.owner is not None:
            return False
        if "system_id" in one and machine.system_id != one["system_id"]:
            return False
        if "name" in one and one["name"] not in (machine.hostname, f"{machine.hostname}.maas"):
            return False
        machine_tags = {t.name for t in self.store.tags.values()
                        if machine.system_id in t.system_ids}
        wanted = {t.strip() for v in params.get("tags", []) for t in v.split(",") if t.strip()}
        unwanted = {t.strip() for v in params.get("not_tags", []) for t in v.split(",")
                    if t.strip()}
        if not wanted <= machine_tags or unwanted & machine_tags:
            return False
        try:
            if "cpu_count" in one and machine.cpu_count < float(one["cpu_count"]):
                return False
            if "mem" in one and machine.memory < float(one["mem"]):
                return False
        except ValueError as exc:
            raise BadRequest(f"cpu_count and mem are numbers: {exc}") from None
        return True

    def _image_choice(self, params: dict[str, str], machine: Machine) -> tuple[str, str, str]:
        image = self.image
        osystem = params.get("osystem") or machine.osystem or image.osystem
        series = params.get("distro_series") or machine.distro_series or image.distro_series
        if "/" in series:
            osystem, series = series.split("/", 1)
        if osystem != image.osystem:
            raise invalid_choice("osystem", osystem, [image.osystem])
        if series != image.distro_series:
            raise invalid_choice(
                "distro_series", series, [f"{image.osystem}/{image.distro_series}"]
            )
        kernel = params.get("hwe_kernel") or image.hwe_kernel
        if kernel != image.hwe_kernel:
            raise ValidationFailed({"hwe_kernel": [
                f"{kernel} is not available for {osystem}/{series} on {machine.architecture}."
            ]})
        return osystem, series, kernel

    def deploy(self, system_id: str, params: dict[str, str]) -> Machine:
        for flag in ("bridge_stp", "enable_hw_sync", "vcenter_registration"):
            _truthy(flag, params.get(flag))
        for flag in ("bridge_all", "install_rackd", "install_kvm", "ephemeral_deploy",
                     "register_vmhost", "enable_kernel_crash_dump", "enable_hw_sync"):
            if _truthy(flag, params.get(flag)):
                raise BadRequest(f"The MAAS simulator does not implement deploy with {flag}")
        with self.store.changing():
            machine = self.machine(system_id)
            if machine.node_status not in (NodeStatus.READY, NodeStatus.ALLOCATED):
                raise Conflict(
                    f"Can't deploy a machine that is in the '{machine.status_name}' state"
                )
            if machine.owner not in (None, API_USER):
                raise Conflict("Can't allocate a machine belonging to another user.")
            # MAAS validates the image in the transaction that allocates a Ready machine,
            # so a refused image leaves the machine as it was.
            osystem, series, kernel = self._image_choice(params, machine)
            if machine.node_status == NodeStatus.READY:
                machine.owner = API_USER
                machine.agent_name = params.get("agent_name", "")
                machine.status = NodeStatus.ALLOCATED
            machine.osystem, machine.distro_series, machine.hwe_kernel = osystem, series, kernel
            if "user_data" in params:
                machine.user_data = params["user_data"]
            self._begin_deployment(machine)
            return machine

    def _begin_deployment(self, machine: Machine) -> None:
        machine.previous_status = NodeStatus.ALLOCATED
        machine.netboot = True
        self._enter(machine, NodeStatus.DEPLOYING, "Deploying", self.timing.deploy_timeout)
        machine.installation_result_id = (machine.installation_result_id or 0) + 1
        self._start(machine, "deploy", self._deploying, NodeStatus.ALLOCATED, False)

    def _deploying(self, machine: Machine, op: _Operation, before: NodeStatus,
                   resume: bool) -> None:
        name = machine.hostname
        if not resume:
            text = user_data_text(machine.user_data)
            self.netboot.request(self.lab, name, {
                "action": "deploy",
                "osystem": machine.osystem,
                "distro_series": machine.distro_series,
                "hwe_kernel": machine.hwe_kernel or "",
                "user_data": text,
                "ssh_keys": ssh_keys_of(text),
            })
            if not self._power_on(machine, op, pxe=True, revert_to=before, action="deploy"):
                return
            for message in ("Performing PXE boot", "Loading ephemeral", "Configuring storage",
                            "Installing OS", "Configuring OS", "Rebooting"):
                self._message(machine, op, message)
        result = self._await_result(machine, op, "deploy")
        if result is None:
            self._timed_out(machine, op)
        elif result.get("status") == "ok":
            with self._changing(machine, op):
                machine.netboot = False
                self._leave(machine, NodeStatus.DEPLOYED, "Deployed")
            self._refresh_power(machine)  # MAAS queries the power after Deploying ends
        else:
            self.log(f"{name}: deployment failed: {result.get('error', 'no reason given')}")
            with self._changing(machine, op):
                machine.error_description = INSTALL_FAILED
                self._leave(machine, NodeStatus.FAILED_DEPLOYMENT,
                            f"Marking node failed - {INSTALL_FAILED}")
            self._refresh_power(machine)

    # -- release ---------------------------------------------------------------------------

    def release(self, system_id: str, params: dict[str, str]) -> Machine:
        erase = _truthy("erase", params.get("erase"))
        secure = _truthy("secure_erase", params.get("secure_erase"))
        quick = _truthy("quick_erase", params.get("quick_erase"))
        _truthy("force", params.get("force"))
        with self.store.changing():
            machine = self.machine(system_id)
            status = machine.node_status
            if status in ALREADY_RELEASED:
                return machine  # MAAS: the postcondition holds, call it success
            if status not in RELEASABLE:
                raise Conflict(
                    f"Machine cannot be released in its current state ('{machine.status_name}')."
                )
            self._cancel(machine)
            self.netboot.cancel(self.lab, machine.hostname)
            machine.previous_status = status
            if erase or secure or quick:
                self._enter(machine, NodeStatus.DISK_ERASING, "Performing PXE boot",
                            self.timing.release_timeout)
            else:
                self._enter(machine, NodeStatus.RELEASING, "Releasing",
                            self.timing.release_timeout)
            self._start(machine, "release", self._releasing, status, False)
            return machine

    def _releasing(self, machine: Machine, op: _Operation, before: NodeStatus,
                   resume: bool) -> None:
        if machine.node_status == NodeStatus.DISK_ERASING:
            if not self._erase(machine, op, before):
                return
        elif not self._power_off(machine, op, revert_to=before):
            return
        else:
            self._sleep(op, self.timing.step)  # MAAS waits to see the power off confirmed
        with self._changing(machine, op):
            machine.owner = None
            machine.agent_name = ""
            machine.osystem = ""
            machine.distro_series = ""
            machine.hwe_kernel = None
            machine.user_data = None
            machine.netboot = True
            machine.error_description = ""
            self._leave(machine, NodeStatus.READY, "Released")

    def _erase(self, machine: Machine, op: _Operation, before: NodeStatus) -> bool:
        """Boot the erase environment when the lab's PXE side has one; otherwise the disk
        is left as it is (a later deploy replaces the root filesystem anyway)."""
        name = machine.hostname
        actions = getattr(self.netboot, "ACTIONS", ())
        if "erase" not in actions:
            self.log(f"{name}: the lab has no erase environment; powering off instead")
            if not self._power_off(machine, op, revert_to=before):
                return False
            self._message(machine, op, "Loading ephemeral")
            self._sleep(op, self.timing.erase)
            self._message(machine, op, "Disks erased")
            return True
        self.netboot.request(self.lab, name, {"action": "erase"})
        if not self._power_on(machine, op, pxe=True, revert_to=before, action="erase"):
            return False
        self._message(machine, op, "Loading ephemeral")
        result = self._await_result(machine, op, "erase")
        if result is None:
            self._timed_out(machine, op)
            return False
        if result.get("status") != "ok":
            with self._changing(machine, op):
                machine.error_description = "Failed to erase disks."
                self._leave(machine, NodeStatus.FAILED_DISK_ERASING,
                            "Marking node failed - Failed to erase disks.")
            return False
        self._message(machine, op, "Disks erased")
        self._power_off_quietly(machine, op)
        return True

    # -- abort, broken, fixed --------------------------------------------------------------

    def abort(self, system_id: str) -> Machine:
        targets = {
            NodeStatus.COMMISSIONING: (NodeStatus.NEW, "Aborted commissioning"),
            NodeStatus.DEPLOYING: (NodeStatus.ALLOCATED, "Aborted deployment"),
            NodeStatus.DISK_ERASING: (NodeStatus.FAILED_DISK_ERASING, "Aborted disk erasing"),
        }
        with self.store.changing():
            machine = self.machine(system_id)
            if machine.node_status not in ABORTABLE:
                raise Conflict(
                    f"Cannot abort in current state: node {machine.system_id} is in state "
                    f"{machine.status_name}."
                )
            self._cancel(machine)
            self.netboot.cancel(self.lab, machine.hostname)
            target, message = targets[machine.node_status]
            self._start(machine, "abort", self._aborting, target, False, message=message)
            return machine

    def _aborting(self, machine: Machine, op: _Operation, target: NodeStatus, resume: bool,
                  message: str = "") -> None:
        self._power_off_quietly(machine, op)
        with self._changing(machine, op):
            if target == NodeStatus.NEW:
                machine.commissioning_status = SCRIPT_ABORTED
            self._leave(machine, target, message)

    def mark_broken(self, system_id: str, comment: str) -> Machine:
        with self.store.changing():
            machine = self.machine(system_id)
            if machine.owner != API_USER:
                raise Forbidden("")
            status = machine.node_status
            self._cancel(machine)
            self.netboot.cancel(self.lab, machine.hostname)
            machine.previous_status = status
            machine.status = NodeStatus.BROKEN
            machine.status_expires = None
            machine.error_description = comment
            if status in RELEASABLE:
                self._start(machine, "mark_broken", self._quiet_power_off, status, False)
            return machine

    def _quiet_power_off(self, machine: Machine, op: _Operation, before: NodeStatus,
                         resume: bool) -> None:
        self._power_off_quietly(machine, op)

    def mark_fixed(self, system_id: str) -> Machine:
        with self.store.changing():
            machine = self.machine(system_id)
            if machine.node_status != NodeStatus.BROKEN:
                raise Conflict("Can't mark a non-broken node as 'Ready'.")
            machine.error_description = ""
            if machine.previous_status == NodeStatus.DEPLOYED:
                machine.status = NodeStatus.DEPLOYED
            else:
                machine.status = NodeStatus.READY
                machine.owner = None
                machine.osystem = ""
                machine.distro_series = ""
                machine.hwe_kernel = None
            machine.previous_status = NodeStatus.BROKEN
            return machine

    # -- power -----------------------------------------------------------------------------

    def power_on(self, system_id: str, params: dict[str, str]) -> Machine:
        with self.store.changing():
            machine = self.machine(system_id)
            if machine.owner is None:
                raise Conflict("Can't start node: it hasn't been allocated.")
            if "user_data" in params:
                machine.user_data = params["user_data"]
            if machine.node_status == NodeStatus.ALLOCATED:
                # MAAS: starting an allocated machine is its deployment.
                machine.osystem, machine.distro_series, machine.hwe_kernel = (
                    self._image_choice({}, machine)
                )
                self._begin_deployment(machine)
            else:
                self._start(machine, "power_on", self._powering_on, machine.node_status, False)
            return machine

    def _powering_on(self, machine: Machine, op: _Operation, before: NodeStatus,
                     resume: bool) -> None:
        # MAAS boots its machines from the network always; with nothing on offer for this
        # machine its PXE answer is "boot local", so a deployed machine boots its disk.
        self._power_on(machine, op, pxe=True, revert_to=None)

    def power_off(self, system_id: str, params: dict[str, str]) -> Machine:
        with self.store.reading():
            machine = self.machine(system_id)
            self._start(machine, "power_off", self._powering_off, machine.node_status, False)
            return machine

    def _powering_off(self, machine: Machine, op: _Operation, before: NodeStatus,
                      resume: bool) -> None:
        self._power_off(machine, op, revert_to=None)

    def query_power_state(self, system_id: str) -> str:
        with self.store.reading():
            machine = self.machine(system_id)
        try:
            state = self._power(machine).power_state()
        except PowerError as exc:
            with self.store.changing():
                machine.power_state = "error"
            raise Unavailable(f"Failed to query node's BMC - {exc}") from None
        with self.store.changing():
            machine.power_state = state
        return state

    # -- resuming after a restart ----------------------------------------------------------

    def resume(self) -> None:
        """Carry on with what was in flight when the simulator stopped."""
        workers = {
            NodeStatus.COMMISSIONING: ("commission", self._commissioning),
            NodeStatus.DEPLOYING: ("deploy", self._deploying),
            NodeStatus.RELEASING: ("release", self._releasing),
            NodeStatus.DISK_ERASING: ("release", self._releasing),
        }
        with self.store.changing():
            for machine in self.store.ordered():
                found = workers.get(machine.node_status)
                if found is not None:
                    name, worker = found
                    before = NodeStatus(machine.previous_status or NodeStatus.NEW)
                    self.log(f"{machine.hostname}: resuming {name} ({machine.status_name})")
                    self._start(machine, name, worker, before, True)

    # -- machinery -------------------------------------------------------------------------

    def _enter(self, machine: Machine, status: NodeStatus, message: str, timeout: float) -> None:
        machine.status = status
        machine.status_message = message
        machine.status_expires = self.clock() + timeout if status in MONITORED else None
        machine.error_description = ""

    def _leave(self, machine: Machine, status: NodeStatus, message: str) -> None:
        machine.status = status
        machine.status_message = message
        machine.status_expires = None

    def _cancel(self, machine: Machine) -> None:
        with self._ops_lock:
            running = self._operations.pop(machine.system_id, None)
        if running is not None:
            running.cancelled.set()

    def _start(self, machine: Machine, name: str, worker: Callable[..., None],
               before: NodeStatus, resume: bool, **extra: Any) -> None:
        self._cancel(machine)
        op = _Operation(name)
        with self._ops_lock:
            self._operations[machine.system_id] = op

        def run() -> None:
            try:
                worker(machine, op, before, resume, **extra)
            except _Cancelled:
                pass
            except Exception as exc:  # a worker must not die silently
                self.log(f"{machine.hostname}: {name} failed in the simulator: {exc!r}")
                raise
            finally:
                with self._ops_lock:
                    if self._operations.get(machine.system_id) is op:
                        del self._operations[machine.system_id]

        thread = threading.Thread(target=run, name=f"maas-{name}-{machine.hostname}",
                                  daemon=True)
        self.threads.append(thread)
        thread.start()

    def _current(self, machine: Machine, op: _Operation) -> bool:
        with self._ops_lock:
            return self._operations.get(machine.system_id) is op and not op.cancelled.is_set()

    def _changing(self, machine: Machine, op: _Operation) -> _OpChange:
        return _OpChange(self, machine, op)

    def _sleep(self, op: _Operation, seconds: float) -> None:
        if op.cancelled.wait(seconds):
            raise _Cancelled()

    def _message(self, machine: Machine, op: _Operation, message: str) -> None:
        self._sleep(op, self.timing.step)
        with self._changing(machine, op):
            machine.status_message = message

    def _await_result(self, machine: Machine, op: _Operation, action: str,
                      ) -> dict[str, Any] | None:
        """The netboot result of `action`, or None once the status's deadline passes."""
        while True:
            result = self.netboot.result(self.lab, machine.hostname)
            if result is not None and result.get("action") == action:
                # The last stage's message stays up a step, however fast the lab was.
                self._sleep(op, self.timing.step)
                return result
            deadline = machine.status_expires
            if deadline is not None and self.clock() >= deadline:
                return None
            self._sleep(op, self.timing.poll)

    def _timed_out(self, machine: Machine, op: _Operation) -> None:
        status = machine.node_status
        minutes = {
            NodeStatus.COMMISSIONING: self.timing.commission_timeout,
            NodeStatus.DEPLOYING: self.timing.deploy_timeout,
        }.get(status, self.timing.release_timeout) / 60
        comment = (f"Node operation '{status_name(status)}' timed out after "
                   f"{minutes:g} minutes.")
        self.log(f"{machine.hostname}: {comment}")
        self.netboot.cancel(self.lab, machine.hostname)
        with self._changing(machine, op):
            if status == NodeStatus.COMMISSIONING:
                machine.commissioning_status = SCRIPT_ABORTED
            machine.error_description = comment
            self._leave(machine, MONITORED[status], f"Marking node failed - {comment}")
        self._power_off_quietly(machine, op)

    def _power_failed(self, machine: Machine, op: _Operation, revert_to: NodeStatus | None,
                      error: PowerError) -> None:
        self.log(f"{machine.hostname}: power action failed: {error}")
        if revert_to is not None:
            self.netboot.cancel(self.lab, machine.hostname)  # no boot will take the offer
        with self._changing(machine, op):
            machine.power_state = "error"
            if revert_to is None:
                return
            current = machine.node_status
            machine.status_message = (
                f"Failed to query node's BMC - ({API_USER}) - Aborting {current.name} and "
                f"reverting to {revert_to.name}. Unable to power control the node. "
                "Please check power credentials."
            )
            machine.status = revert_to
            machine.status_expires = None
            if current == NodeStatus.COMMISSIONING:
                machine.commissioning_status = SCRIPT_ABORTED

    def _perform(self, machine: Machine, op: _Operation, change: str, pxe: bool = False,
                 booted: Callable[[], bool] | None = None) -> str:
        """MAAS's perform_power: change the power, pause, check the state; again with the
        next pause while the BMC fails or the state is not `change` yet; a fatal error (the
        BMC refused the credentials) ends it at once. `booted` says a network boot has
        already reported, so a machine that powered itself off since (commissioning) is
        not powered on again. Returns the state last seen."""
        driver = self._power(machine)
        last: PowerError | None = None
        state = "unknown"
        for pause in self.timing.power_waits:
            try:
                driver.power_on(pxe=pxe) if change == "on" else driver.power_off()
            except PowerFatalError:
                raise
            except PowerError as exc:
                last = exc
                self.log(f"{machine.hostname}: power {change} failed, trying again: {exc}")
                self._sleep(op, pause)
                continue
            self._sleep(op, pause)
            if booted is not None and booted():
                return change
            try:
                state = driver.power_state()
            except PowerFatalError:
                raise
            except PowerError as exc:
                last = exc
                continue
            if state == change:
                return state
        if last is not None:
            raise last
        raise PowerError(f"Failed to power {machine.system_id}. BMC never transitioned from "
                         f"{state} to {change}.")

    def _reported(self, machine: Machine, action: str) -> Callable[[], bool]:
        def reported() -> bool:
            result = self.netboot.result(self.lab, machine.hostname)
            return result is not None and result.get("action") == action
        return reported

    def _power_on(self, machine: Machine, op: _Operation, pxe: bool,
                  revert_to: NodeStatus | None, action: str | None = None) -> bool:
        try:
            booted = self._reported(machine, action) if action else None
            self._perform(machine, op, "on", pxe=pxe, booted=booted)
        except PowerError as exc:
            self._power_failed(machine, op, revert_to, exc)
            return False
        with self._changing(machine, op):
            machine.power_state = "on"
        return True

    def _power_off(self, machine: Machine, op: _Operation, revert_to: NodeStatus | None) -> bool:
        try:
            self._perform(machine, op, "off")
        except PowerError as exc:
            self._power_failed(machine, op, revert_to, exc)
            return False
        with self._changing(machine, op):
            machine.power_state = "off"
        return True

    def _power_off_quietly(self, machine: Machine, op: _Operation | None = None) -> None:
        """Power off where MAAS does so on its own (end of commissioning, abort): a BMC
        error leaves power_state "error" and the transition goes on."""
        try:
            state = self._perform(machine, op or _Operation("power off"), "off")
        except PowerError as exc:
            self.log(f"{machine.hostname}: power off failed: {exc}")
            state = "error"
        with self.store.changing():
            machine.power_state = state

    def _refresh_power(self, machine: Machine) -> None:
        try:
            state = self._power(machine).power_state()
        except PowerError as exc:
            self.log(f"{machine.hostname}: power query failed: {exc}")
            state = "error"
        with self.store.changing():
            machine.power_state = state


class _OpChange:
    """`with lifecycle._changing(machine, op):` a change that only a current operation makes;
    a cancelled one stops there (its machine has moved on)."""

    def __init__(self, lifecycle: Lifecycle, machine: Machine, op: _Operation) -> None:
        self._lifecycle = lifecycle
        self._machine = machine
        self._op = op
        self._context = lifecycle.store.changing()

    def __enter__(self) -> Machine:
        self._context.__enter__()
        if not self._lifecycle._current(self._machine, self._op):
            self._context.__exit__(None, None, None)
            raise _Cancelled()
        return self._machine

    def __exit__(self, *exc: object) -> None:
        self._context.__exit__(*exc)

"""The firmware operation: the node runs exactly what the manifest pins, or kiln says why not.

`pinned` reads every source in its body (the BMC's Redfish FirmwareInventory from the
controller, `mlxfwmanager --query` and `nvidia-smi -q` on the node), matches them to the
manifest (roles.firmware.observe), and yields nothing when all agree. Otherwise it yields
the update as FunctionCommands, each of which runs only when the deploy executes (so `--dry`
and the preview list the update and change nothing):

    1. every blob checked on the controller, streamed from the mirror (sha256 and size);
       a mismatch fails the node here, before anything else: not drained, nothing flashed
    2. the node drained from the pool if it is a member (the pool interface, roles/pool)
    3. BIOS/BMC through Redfish SimpleUpdate, the task polled to its end (roles/bmc);
       ConnectX through the node: `kiln-mirror fetch --sha256 --size` (the node checks the
       bytes it flashes) then `mlxfwmanager -u -i IMAGE -y -d DEVICE` per card out of date
    4. the resets the images need: a BMC image, the BMC's own restart (Manager.Reset or
       `mc reset cold`, waiting until it answers as a working BMC again); BIOS and NIC
       images, the system's reset through the BMC (power cycle, wait for a new boot)
    5. every source read again: each component must now run the pinned version

`max_parallel_firmware` bounds how many nodes are in this operation at once: the deploy
passes it as pyinfra's `_parallel`, and pyinfra runs the operation batch after batch, each
node's whole update (flash, reset, check) inside its batch. With `rolling=True`
(deploy/firmware.py) a node of a later batch starts only if no node of an earlier batch
failed (any failure of this operation: a refused blob, a refusal to flash, a failed flash,
reset or check): the rollout stops at the first bad batch, the nodes after it are not read
or touched, and each says which node stopped it.
"""

from __future__ import annotations

import logging
import shlex
import weakref
from collections.abc import Callable
from contextlib import closing
from typing import Any

import gevent
from pyinfra import host
from pyinfra.api import FunctionCommand, StringCommand, operation
from pyinfra.api.exceptions import ConnectError
from pyinfra.api.host import Host
from pyinfra.api.state import State
from pyinfra.context import state as current_state
from pyinfra.facts.server import Which

from kiln.core.context import node_context
from kiln.core.errors import KilnError
from kiln.core.ledger import Ledger, NodeState
from kiln.core.manifest import FirmwareComponent, load_manifest
from kiln.core.outcomes import fail_host, preview
from kiln.core.parsing import ParseError
from kiln.roles.bmc import facts as bmc_facts
from kiln.roles.bmc import operations as bmc_operations
from kiln.roles.firmware.blobs import blob_url, check_url
from kiln.roles.firmware.facts import MlxFwManagerQuery
from kiln.roles.firmware.observe import ComponentStatus, observe, sources_needed
from kiln.roles.firmware.parsers import parse_mlxfwmanager
from kiln.roles.firmware.plan import Flash, UpdatePlan, plan_update
from kiln.roles.mirror.render import NODE_TOOL
from kiln.roles.nvidia.facts import NvidiaSmiQuery
from kiln.roles.nvidia.parsers import parse_nvidia_smi_q
from kiln.roles.pool import Membership, pool_for
from kiln.roles.provision import will_be_imaged

logger = logging.getLogger("pyinfra")

# Where the node keeps a NIC image between its checked download and the flash.
NODE_BLOB_DIR = "/var/lib/kiln-firmware"
SIMPLE_UPDATE_TIMEOUT = 1800.0
BMC_RESTART_WAIT = 600.0  # a BMC booting a new image may take longer than a plain restart
MLX_TOOL = "mlxfwmanager"
SMI_TOOL = "nvidia-smi"


# -- the rollout: later batches see an earlier batch's failure ---------------------------------


class Rollout:
    """The nodes whose firmware update failed in this pyinfra run."""

    def __init__(self) -> None:
        self.failed: list[str] = []


_ROLLOUTS: weakref.WeakKeyDictionary[State, Rollout] = weakref.WeakKeyDictionary()


def rollout_for(state: State) -> Rollout:
    if state not in _ROLLOUTS:
        _ROLLOUTS[state] = Rollout()
    return _ROLLOUTS[state]


def _node(host: Host) -> str:
    return node_context(host).label


def _recorded(state: State, host: Host, step: Callable[..., bool], *args: Any) -> bool:
    """Run one step; a failure is recorded for the rollout before the node drops out."""
    try:
        ok = step(state, host, *args)
    except KilnError as exc:
        ok = fail_host(host, f"node {_node(host)}: {exc}")
    except Exception:
        rollout_for(state).failed.append(_node(host))
        raise
    if not ok:
        rollout_for(state).failed.append(_node(host))
    return ok


def _step(step: Callable[..., bool], *args: Any) -> FunctionCommand:
    return FunctionCommand(_recorded, (step, *args), {})


def earlier_failures(state: State) -> list[str]:
    """The nodes that failed in earlier batches of this run, taken as a node's operation
    starts. pyinfra starts every node of a batch together (gevent); the yield here lets each
    of them take this list before any of them can fail, so a node never stops for a failure
    of its own batch, only for one of a batch before it."""
    failed = list(rollout_for(state).failed)
    gevent.sleep(0)
    return failed


def _refuse(state: State, host: Host, message: str) -> bool:
    return fail_host(host, message)


def refused(message: str) -> FunctionCommand:
    """Fail the node with `message`, counted as a failure of its batch in a rolling update."""
    return _step(_refuse, message)


# -- reading the node ---------------------------------------------------------------------


def _as_root(host: Host) -> dict[str, bool]:
    return {"_sudo": node_context(host).sudo}


def _redfish_inventory(host: Any) -> list[dict[str, Any]] | None:
    """The BMC's FirmwareInventory, or None when the inventory names no BMC."""
    if not node_context(host).has_bmc:
        return None
    return bmc_facts.firmware_inventory(host)


def read_sources(components: dict[str, FirmwareComponent]) -> dict[str, ComponentStatus]:
    """In an operation body: every source the manifest's rules name, read now."""
    needed = sources_needed(components)
    redfish = _redfish_inventory(host) if "redfish" in needed else None
    mlx = smi = None
    if "mlxfwmanager" in needed:
        if not host.get_fact(Which, command=MLX_TOOL):
            raise KilnError(f"{MLX_TOOL} is not installed on the node (NVIDIA MFT; the OFED "
                            "stage installs it): the ConnectX firmware cannot be read")
        mlx = host.get_fact(MlxFwManagerQuery)
    if "nvidia-smi" in needed:
        if not host.get_fact(Which, command=SMI_TOOL):
            raise KilnError(f"{SMI_TOOL} is not installed on the node (the NVIDIA stage "
                            "installs it): the GPU firmware cannot be read")
        smi = host.get_fact(NvidiaSmiQuery)
        if smi is None:  # pyinfra logged why (the driver not loaded, a library mismatch …)
            raise KilnError(f"{SMI_TOOL} -q gave no answer: the GPU firmware cannot be read")
    return observe(components, redfish, mlx, smi)


def _run(host: Host, command: str) -> tuple[bool, str]:
    status, output = host.run_shell_command(StringCommand(command), **_as_root(host))
    return bool(status), "\n".join(output.output_lines)


def _read_again(host: Host, components: dict[str, FirmwareComponent],
                ) -> dict[str, ComponentStatus]:
    """At execution, after the resets: the same sources, read through the host directly."""
    needed = sources_needed(components)
    redfish = _redfish_inventory(host) if "redfish" in needed else None
    mlx = smi = None
    try:
        if "mlxfwmanager" in needed:
            ok, text = _run(host, f"{MLX_TOOL} --query 2>&1")
            if not ok:
                raise KilnError(f"{MLX_TOOL} --query failed: {text[-400:]}")
            mlx = parse_mlxfwmanager(text)
        if "nvidia-smi" in needed:
            ok, text = _run(host, f"{SMI_TOOL} -q")
            if not ok:
                raise KilnError(f"{SMI_TOOL} -q failed: {text[-400:]}")
            smi = parse_nvidia_smi_q(text)
    except ParseError as exc:
        raise KilnError(f"reading the firmware back: {exc}") from None
    return observe(components, redfish, mlx, smi)


# -- the steps ------------------------------------------------------------------------------


def _check_blobs(state: State, host: Host, flashes: list[Flash], urls: dict[str, str],
                 verify: bool | str) -> bool:
    for flash in flashes:
        check_url(urls[flash.key], flash.blob, verify=verify)
        host.log(f"firmware: {flash.blob.file} sha256 {flash.blob.sha256[:16]}… "
                 f"{flash.blob.size} bytes: as pinned", log_func=logger.info)
    return True


def _drain(state: State, host: Host, drain: bool, reason: str) -> bool:
    if not drain:
        return True
    pool = pool_for(host)
    node = _node(host)
    if pool.entry(node).membership == Membership.POOLED:
        pool.drain(node, reason)
        host.log(f"pool: drained {node} from the {pool.where} ({reason})", log_func=logger.info)
    ledger = Ledger(node_context(host).ledger_path)
    try:
        # Out of the pool is out of `pooled`: only the gate moves it back, after its checks.
        if ledger.state(node) == NodeState.POOLED:
            ledger.transition(node, NodeState.CONFIGURED, f"drained: {reason}")
    finally:
        ledger.close()
    return True


def _redfish_flash(state: State, host: Host, flash: Flash, url: str) -> bool:
    with closing(bmc_facts.bmc_for(host)) as bmc:
        for target in flash.targets:
            result = bmc.update_firmware(target, url, timeout=SIMPLE_UPDATE_TIMEOUT)
            host.log(f"firmware: {flash.key} {target} <- {flash.blob.file} through the BMC "
                     f"(task {result.task}: {result.state})", log_func=logger.info)
            for message in result.messages:
                host.log(f"  {message}", log_func=logger.info)
    return True


def _mlx_flash(state: State, host: Host, flash: Flash, url: str) -> bool:
    node = _node(host)
    image = f"{NODE_BLOB_DIR}/{flash.blob.file}"
    ok, text = _run(host, f"mkdir -p {NODE_BLOB_DIR} && " + shlex.join([
        NODE_TOOL, "fetch", "--sha256", flash.blob.sha256, "--size", str(flash.blob.size),
        url, image]) + " 2>&1")
    if not ok:
        return fail_host(host, f"node {node}: firmware blob {flash.blob.file}: the node's "
                         f"checked download of {url} failed, nothing flashed: "
                         f"{text.strip()[-600:]}")
    for device in flash.targets:
        ok, text = _run(host, shlex.join([MLX_TOOL, "-u", "-i", image, "-y", "-d", device])
                        + " 2>&1")
        if not ok:
            return fail_host(host, f"node {node}: {MLX_TOOL} -u -i {image} -d {device} "
                             f"failed: {text.strip()[-600:]}")
        host.log(f"firmware: {flash.key} {device} <- {flash.blob.file} ({MLX_TOOL})",
                 log_func=logger.info)
    _run(host, shlex.join(["rm", "-f", image]))
    return True


def _bmc_restart(state: State, host: Host, keys: list[str]) -> bool:
    """A BMC runs its new image once it restarts itself (Manager.Reset / mc reset cold);
    the system's reset, which BIOS and NIC images need, does not restart the BMC."""
    with closing(bmc_facts.bmc_for(host)) as bmc:
        reset = bmc.reset_bmc(BMC_RESTART_WAIT)
    host.log(f"firmware: BMC restarted ({reset}) to run the new {', '.join(keys)} image, "
             "and answers again", log_func=logger.info)
    return True


def _verify(state: State, host: Host, manifest_file: str) -> bool:
    components = load_manifest(manifest_file).firmware
    statuses = _read_again(host, components)
    wrong = [status.describe() for status in statuses.values() if not status.ok]
    if wrong:
        return fail_host(host, f"node {_node(host)}: after the update and reset the firmware "
                         f"is not as {manifest_file} pins: " + "; ".join(wrong))
    host.log(f"firmware: all {len(statuses)} components run what {manifest_file} pins",
             log_func=logger.info)
    return True


def _rebooted(reboot: FunctionCommand) -> Callable[..., bool]:
    def step(state: State, host: Host) -> bool:
        return bool(reboot.function(state, host, *reboot.args, **reboot.kwargs))

    return step


def update_commands(plan: UpdatePlan, manifest_file: str, mirror_firmware: str,
                    verify: bool | str, drain: bool) -> list[FunctionCommand]:
    urls = {flash.key: blob_url(mirror_firmware, flash.blob) for flash in plan.flashes}
    commands = [
        _step(_check_blobs, plan.flashes, urls, verify),
        _step(_drain, drain, f"firmware update: {plan.summary()}"),
    ]
    for flash in plan.flashes:
        flasher = _redfish_flash if flash.update == "redfish" else _mlx_flash
        commands.append(_step(flasher, flash, urls[flash.key]))
    if "bmc-reset" in plan.resets:
        commands.append(_step(_bmc_restart,
                              [f.key for f in plan.flashes if f.activation == "bmc-reset"]))
    if set(plan.resets) - {"bmc-reset"}:
        commands += [_step(_rebooted(command)) for command in bmc_operations.reboot_commands()]
    commands.append(_step(_verify, manifest_file))
    return commands


@operation()
def pinned(manifest_file: str, mirror_firmware: str | None,  # noqa: ANN201 - generator
           mirror_verify: bool | str = True, drain: bool = True,
           rolling: bool = False):
    """Every firmware component `manifest_file` pins runs its version on this node (see the
    module docstring for the steps of an update)."""
    if rolling and current_state.is_executing:
        failed = earlier_failures(host.state)
        if failed:
            yield refused(f"node {_node(host)}: rollout stopped: the firmware update failed on "
                          f"{', '.join(failed)} in an earlier batch; {_node(host)} not touched")
            return
    try:
        components = load_manifest(manifest_file).firmware
    except KilnError as exc:
        yield refused(str(exc))
        return
    # A preview reads a deployed node as a run does (reads only); a node MAAS is still to
    # image has nothing to read yet.
    if not current_state.is_executing and will_be_imaged(host):
        yield preview(f"firmware ({', '.join(components)})")
        return
    try:
        statuses = read_sources(components)
    except ConnectError as exc:
        if current_state.is_executing:
            yield refused(f"node {_node(host)}: {exc}")
        else:
            yield preview(f"firmware ({', '.join(components)}); the node cannot be read now: "
                          f"{exc}")
        return
    except KilnError as exc:
        yield refused(f"node {_node(host)}: {exc}")
        return
    plan = plan_update(statuses, components, manifest_file)
    if not plan.flashes and not plan.refusals:
        host.noop(f"firmware: {'; '.join(s.describe() for s in statuses.values())}")
        return
    if not plan.flashes:
        yield refused(f"node {_node(host)}: firmware differs from {manifest_file}: "
                      + "; ".join(plan.refusals))
        return
    if mirror_firmware is None:
        yield refused(f"node {_node(host)}: firmware to update ({plan.summary()}), but no mirror "
                      "to take the blobs from (no service node in the inventory, and host "
                      "data kiln_mirror_host is not set)")
        return
    # A preview (--dry, or no -y) says what the update will be; a run says what it does.
    doing = "updating" if current_state.is_executing else "will update"
    for flash in plan.flashes:
        logger.info(f"{host.print_prefix}firmware: {flash.key}: {flash.was}; "
                    f"{doing} to {flash.version}")
    for refusal in plan.refusals:
        logger.warning(f"{host.print_prefix}firmware: {refusal}")
    yield from update_commands(plan, manifest_file, mirror_firmware, mirror_verify, drain)

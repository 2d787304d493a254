"""Operations of the fabric stage on the node: mlxconfig settings, nvidia-peermem, IPoIB,
and the node-side check.

Each reads the node in its body (one `HcaReport` round trip, cached by pyinfra for the
run) and yields only what must change; writes happen only in the yielded commands, so
`--dry` and the preview list them and change nothing. A problem fails this node alone
(kiln.core.outcomes), naming the HCA.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from io import StringIO
from typing import Any

from pyinfra import host
from pyinfra.api import FunctionCommand, StringCommand, operation
from pyinfra.api.host import Host
from pyinfra.api.state import State
from pyinfra.context import state as current_state
from pyinfra.operations import files

from kiln.core.checkrun import check_commands, mark_ran
from kiln.core.checks import CheckResult
from kiln.core.context import NodeContext, node_context
from kiln.core.errors import KilnError
from kiln.core.manifest import HCATopology
from kiln.core.outcomes import fail, fail_host, preview
from kiln.core.parsing import ParseError
from kiln.roles.base.operations import node_readable
from kiln.roles.bmc import operations as bmc_operations
from kiln.roles.infiniband import ipoib as ipoib_config
from kiln.roles.infiniband.checks import CHECK_NAME, FabricCheck, check_fabric, rails
from kiln.roles.infiniband.facts import HCA_REPORT, HcaReport, MlxFwResetQuery
from kiln.roles.infiniband.mlxsettings import not_taken, plan_settings
from kiln.roles.infiniband.parsers import parse_hca_report
from kiln.roles.ufm.checks import switch_ends
from kiln.roles.ufm.settings import fabric_manager as ufm_fabric_manager
from kiln.roles.ufm.view import fabric_view

logger = logging.getLogger("pyinfra")

PEERMEM_MODULE = "nvidia-peermem"
PEERMEM_LOADED = "nvidia_peermem"  # as /proc/modules names it
PEERMEM_CONF = "/etc/modules-load.d/kiln-peermem.conf"


def _node() -> str:
    return node_context(host).label


def _report() -> dict[str, Any]:
    """The HCAs now: the fact in a preview; read afresh while the deploy runs, since an
    earlier operation of the stage may have reset the cards or rebooted the node."""
    if current_state.is_executing:
        return _read_again(host)
    return host.get_fact(HcaReport)


def _read_again(host: Host) -> dict[str, Any]:
    """At execution, after a reset: the HCAs read afresh through the host (not the fact
    cache, which holds what they said before)."""
    status, output = host.run_shell_command(StringCommand(HCA_REPORT),
                                            _sudo=node_context(host).sudo)
    if not status:
        raise KilnError("reading the HCAs back failed: "
                        + "\n".join(output.output_lines)[-400:])
    try:
        return parse_hca_report("\n".join(output.output_lines))
    except ParseError as exc:
        raise KilnError(f"reading the HCAs back: {exc}") from None


# -- mlxconfig -----------------------------------------------------------------------------


def _settings_took(state: State, host: Host, wanted: dict[str, Any], devices: list[str],
                   source: str) -> bool:
    node = node_context(host).label
    try:
        report = _read_again(host)
    except KilnError as exc:
        return fail_host(host, f"node {node}: {exc}")
    hcas = [hca for hca in report["hcas"] if hca["device"] in devices]
    missing = sorted(set(devices) - {hca["device"] for hca in hcas})
    wrong = [f"{device}: gone after the reset" for device in missing] + not_taken(wanted, hcas)
    if wrong:
        return fail_host(host, f"node {node}: mlxconfig settings of {source} did not take: "
                         + "; ".join(wrong))
    host.log(f"mlxconfig: {', '.join(devices)} run the settings of {source}",
             log_func=logger.info)
    return True


@operation()
def mlxconfig_settings(settings: dict[str, Any], source: str):  # noqa: ANN201
    """Each HCA's mlxconfig settings are the manifest's (`source` names it): set what
    differs, reset the cards that need it (mlxfwreset where the card supports it, else one
    power cycle through the BMC), read back."""
    if not settings:
        host.noop("mlxconfig: the manifest sets nothing")
        return
    if not node_readable():
        yield preview(f"mlxconfig settings ({', '.join(settings)})")
        return
    try:
        report = _report()
    except KilnError as exc:
        yield fail(f"node {_node()}: {exc}")
        return
    if not report["mlxconfig"]:
        yield fail(f"node {_node()}: mlxconfig is not installed (NVIDIA MFT, from the OFED "
                   "stage): the HCA settings cannot be read")
        return
    plan = plan_settings(settings, report["hcas"])
    if plan.problems:
        yield fail(f"node {_node()}: mlxconfig settings of {source}: " + "; ".join(plan.problems))
        return
    changes = plan.changes
    if not changes:
        host.noop(f"mlxconfig: {len(plan.cards)} HCA(s) run the settings of {source}")
        return
    doing = "setting" if current_state.is_executing else "will set"
    for card in changes:
        logger.info(f"{host.print_prefix}mlxconfig: {doing} {card.describe()}")
    for card in changes:
        if card.to_set:
            yield card.set_command()
    resets = [card.device for card in changes if card.needs_reset or card.to_set]
    live = {device: host.get_fact(MlxFwResetQuery, device=device)["supported"]
            for device in resets}
    if all(live.values()):
        for device in resets:
            yield f"mlxfwreset -d {device} -y reset"
    else:
        cannot = ", ".join(device for device, ok in live.items() if not ok)
        logger.info(f"{host.print_prefix}mlxconfig: mlxfwreset cannot reset {cannot}: "
                    "power cycle through the BMC")
        yield from bmc_operations.reboot_commands()
    yield FunctionCommand(_settings_took, (settings, [c.device for c in plan.cards], source),
                          {})


# -- nvidia-peermem ---------------------------------------------------------------------------


@operation()
def peermem():  # noqa: ANN201
    """nvidia-peermem (GPUDirect RDMA) loaded now and at every boot."""
    if not node_readable():
        yield preview("nvidia-peermem")
        return
    yield from files.put._inner(src=StringIO(f"{PEERMEM_MODULE}\n"), dest=PEERMEM_CONF,
                                mode="644", create_remote_dir=True)
    try:
        report = _report()
    except KilnError as exc:
        yield fail(f"node {_node()}: {exc}")
        return
    if PEERMEM_LOADED not in report["modules"]:
        yield f"modprobe {PEERMEM_MODULE}"


# -- IPoIB --------------------------------------------------------------------------------------


@operation()
def ipoib(settings: ipoib_config.IPoIBSettings):  # noqa: ANN201
    """One IPoIB interface per HCA rail at the inventory's address: the OS's network
    configuration written (netplan or ifupdown) and the live interface brought up."""
    if not node_readable():
        yield preview(f"IPoIB on {len(settings.addresses)} rails")
        return
    try:
        report = _report()
    except KilnError as exc:
        yield fail(f"node {_node()}: {exc}")
        return
    plan = ipoib_config.plan_ipoib(settings, report["hcas"])
    if plan.problems:
        yield fail(f"node {_node()}: IPoIB: " + "; ".join(plan.problems))
        return
    try:
        path, text = ipoib_config.render_config(report["os"], plan.ports, settings.mtu)
    except KilnError as exc:
        yield fail(f"node {_node()}: {exc}")
        return
    yield from files.put._inner(src=StringIO(text), dest=path, mode="644",
                                create_remote_dir=True)
    for port in plan.ports:
        yield from ipoib_config.live_commands(port)


# -- the node-side check --------------------------------------------------------------------


@operation()
def fabric_check(expect: HCATopology):  # noqa: ANN201
    """Every HCA the manifest expects: present, Active/LinkUp, at its rate, link layer and
    PCIe width. Anything else fails the node, naming the HCA and what to do. The result
    goes into the ledger when it differs from the last one recorded there: a converged
    node yields nothing."""
    if not node_readable():
        yield preview("the HCA check")
        return
    try:
        ctx = node_context(host)
        report = _report()
    except KilnError as exc:
        yield fail(f"node {_node()}: {exc}")
        return
    # When it ran, for the UFM check after it: its event window starts here (see
    # roles.infiniband.infiniband). Memory only, for this run.
    mark_ran(host, CHECK_NAME)
    result = _with_switch_ends(check_fabric(report["hcas"], expect, ctx.label), ctx)
    commands = check_commands(result.combined, str(ctx.ledger_path), ctx.label, CHECK_NAME,
                              title=f"node {ctx.label}: fabric check")
    if not commands:
        host.noop(f"fabric: {result.summary()}")
    yield from commands


def _with_switch_ends(result: FabricCheck, ctx: NodeContext) -> FabricCheck:
    """A failing HCA's result names the switch port at the far end of its cable, as UFM
    knows it: where the technician goes (a port down on the node is the same visit)."""
    failing = [r for r in result.results if not r.ok and _port_guid(r)]
    if not failing or ctx.ufm_server is None or ufm_fabric_manager(ctx) != "ufm":
        return result
    try:
        ends = switch_ends(fabric_view(host), [_port_guid(r) for r in failing])
    except (KilnError, OSError):
        return result  # the UFM check that follows says UFM could not be read
    named = tuple(replace(r, subject=replace(r.subject, peer=ends[_port_guid(r)]))
                  if not r.ok and _port_guid(r) in ends else r for r in result.results)
    return replace(result, results=named)


def _port_guid(result: CheckResult) -> str | None:
    return dict(result.subject.ids).get("port GUID")


def rail_ports(expect: HCATopology) -> list[tuple[str, str]] | None:
    """(HCA name, port GUID) of each of the node's rails, for the UFM check: read in that
    operation's body (afresh while the deploy runs); None when the node cannot be read yet
    (a preview of a node with no OS)."""
    if not node_readable():
        return None
    report = _report()
    return [(hca["device"], hca["port_guid"]) for hca in rails(report["hcas"], expect)
            if hca.get("port_guid")]

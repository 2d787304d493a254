"""The burn-in operations: the node under load, alone and with partners.

    single_node_burnin()   dcgmi diag at the burn-in level, all_reduce_perf on the node's 8
                           GPUs at the SKU's size, ib_write_bw on each HCA: one command (each
                           part under its own deadline, kiln.core.sections), judged on the
                           controller (kiln.roles.burnin.single)
    multi_node_burnin()    two-node all_reduce_perf under mpirun, every node of the run at
                           once, round after round until the isolation has decided each node
                           (kiln.roles.burnin.multinode): run once per run, by whichever
                           node's greenlet gets there first; every node waits for it and
                           records its own result

Burn-in loads the node: it runs only when the deploy executes (a preview lists it and
writes nothing), and never on a node the ledger holds as pooled with its last burn-in
passed (a rerun of bring-up on a converged cluster leaves the pool's jobs alone and says so;
host data kiln_burnin_force: true runs it anyway). Every result goes into the ledger.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any

import gevent
from gevent.event import AsyncResult
from pyinfra import host
from pyinfra.api import FunctionCommand, StringCommand, operation
from pyinfra.api.host import Host
from pyinfra.api.state import State
from pyinfra.context import state as current_state

from kiln.core.checkrun import record_and_settle
from kiln.core.checks import Combined
from kiln.core.context import node_context
from kiln.core.errors import KilnError
from kiln.core.ledger import NodeState, last_results, recorded_state
from kiln.core.manifest import Burnin, HCATopology
from kiln.core.outcomes import fail, fail_host, preview, refuse
from kiln.core.sections import Section, script, split_sections
from kiln.roles.base.facts import FileTexts
from kiln.roles.base.operations import node_readable
from kiln.roles.burnin import multinode
from kiln.roles.burnin.access import AUTHORIZED_KEYS, NODE_KEY, authorized_keys_text, read_key
from kiln.roles.burnin.runs import NcclRun, RunClass, read_ib_write_bw_run, read_nccl_run
from kiln.roles.burnin.single import (
    BURNIN_DCGM,
    BURNIN_IB_WRITE_BW,
    BURNIN_NCCL_SINGLE,
    judge_single_node,
)
from kiln.roles.infiniband.facts import InfinibandSysfs

logger = logging.getLogger("pyinfra")

CHECKS = (BURNIN_DCGM, BURNIN_NCCL_SINGLE, BURNIN_IB_WRITE_BW, multinode.BURNIN_NCCL_MULTI)
DEFAULT_STATE = "state/burnin"  # `kiln burnin init-key`'s default
IB_PORT_BASE = 18515  # perftest's default port; one per HCA so a stale server cannot answer


# --- which nodes burn in ------------------------------------------------------------------

def proven(ledger: str, node: str) -> bool:
    """A pooled node whose last result of every burn-in check passed: burn-in leaves it be."""
    if recorded_state(ledger, node) != NodeState.POOLED:
        return False
    last = [last_results(ledger, node, check) for check in CHECKS]
    return all(last) and all(status.passes for results in last for status in results.values())


def _wanted(ctx: Any) -> bool:
    """Whether this node burns in now: not a proven pooled node, unless forced."""
    return bool(ctx.get("kiln_burnin_force")) or not proven(str(ctx.ledger_path), ctx.label)


def _leave_be(ctx: Any) -> bool:
    if not _wanted(ctx):
        host.noop("burn-in: pooled, and its last burn-in passed: not run again on a "
                  "serving node (host data kiln_burnin_force: true runs it)")
        return True
    return False


def compute_hcas(devices: Sequence[dict[str, Any]], topology: HCATopology) -> list[str]:
    """The HCAs burn-in loads: the SKU's compute rails (its link layer and, where the
    manifest names it, its CA type), not a storage or management NIC beside them."""
    chosen = []
    for device in devices:
        ports = device.get("ports") or []
        if not ports or ports[0].get("link_layer") != topology.link_layer:
            continue
        if topology.ca_type and device.get("hca_type") not in (None, topology.ca_type):
            continue
        chosen.append(device["name"])
    return sorted(chosen, key=_natural)


def _natural(name: str) -> tuple[str, int]:
    stem = name.rstrip("0123456789")
    return stem, int(name[len(stem):] or -1)


# --- the key mpirun uses ------------------------------------------------------------------

def install_key() -> None:
    """The burn-in key on the node (private half 0600, public half in root's
    authorized_keys): what mpirun on a pair's first node reaches its partner with."""
    from io import StringIO

    from pyinfra.operations import files

    ctx = node_context(host)
    try:
        private, public = read_key(ctx.get("kiln_burnin_state") or DEFAULT_STATE)
    except KilnError as exc:
        refuse(f"node {ctx.label}: {exc}")
        return
    files.directory(name="Burn-in: /root/.ssh", path="/root/.ssh", mode="700")
    files.put(name="Burn-in: the mpirun key", src=StringIO(private), dest=NODE_KEY,
              mode="600")
    key_trusted(name="Burn-in: the mpirun key is trusted", public=public)


@operation()
def key_trusted(public: str):  # noqa: ANN201 - pyinfra operation generator
    """The burn-in's public key on one line of root's authorized_keys (others left alone).

    Not pyinfra's files.line: it finds the line with grep and an escaped pattern, and in
    grep's basic syntax an escaped '+' (base64 has them) is a repetition, so a key with one
    was never found and was appended again on every run."""
    from io import StringIO

    from pyinfra.operations import files

    if not node_readable():
        yield preview("the burn-in key in root's authorized_keys")
        return
    current = host.get_fact(FileTexts, glob=AUTHORIZED_KEYS).get(AUTHORIZED_KEYS)
    wanted = authorized_keys_text(current, public)
    if wanted is None:
        host.noop("the burn-in key is in root's authorized_keys")
        return
    yield from files.put._inner(src=StringIO(wanted), dest=AUTHORIZED_KEYS, mode="600")


# --- single node --------------------------------------------------------------------------

def ib_write_bw_command(hca: str, index: int, burnin: Burnin) -> str:
    """perftest's loopback on one HCA: a server in the background, the client to it. From
    GPU memory (--use_cuda, GPU `index`: on HGX boards HCA k sits on GPU k's PCIe switch)
    where the SKU has GPUDirect. The client's report is what is read."""
    port = IB_PORT_BASE + index
    args = (f"-d {hca} -p {port} -s {burnin.ib_write_bw_size_bytes} "
            f"-D {burnin.ib_write_bw_seconds} --report_gbits")
    if burnin.gpudirect:
        args += f" --use_cuda={index}"
    # The client starts once the server listens (perftest's client does not wait).
    return (f"ib_write_bw {args} >/dev/null 2>&1 & server=$!; "
            f"for i in $(seq 50); do ss -ltn 2>/dev/null | grep -q ':{port} ' && break; "
            "sleep 0.1; done; "
            f"ib_write_bw {args} localhost; rc=$?; wait $server; exit $rc")


def single_node_sections(burnin: Burnin, hcas: Sequence[str]) -> list[Section]:
    size = burnin.single_node_all_reduce.size_bytes
    parts = [
        Section("dcgm", f"dcgmi diag -r {burnin.dcgmi_diag_level} -j",
                burnin.timeouts.dcgm_s),
        Section("nccl", f"all_reduce_perf -b {size} -e {size} -f 2 -g 8",
                burnin.timeouts.nccl_s),
    ]
    parts += [Section(f"ib-{hca}", ib_write_bw_command(hca, k, burnin),
                      burnin.timeouts.ib_write_bw_s) for k, hca in enumerate(hcas)]
    return parts


def _timed(target: Host, command: str, sudo: bool) -> tuple[str, float]:
    started = time.monotonic()
    status, output = target.run_shell_command(StringCommand(command), _sudo=sudo)
    if not status:
        raise KilnError("the burn-in command failed: " + "\n".join(output.output_lines)[-400:])
    return "\n".join(output.stdout_lines), time.monotonic() - started


def _run_single(state: State, host: Host, hcas: list[str]) -> bool:
    ctx = node_context(host)
    node, burnin = ctx.label, ctx.manifest.burnin
    parts = single_node_sections(burnin, hcas)
    # Each part's own duration is not measured on the node (nothing is written there): the
    # deadline bounds it, and the run's total is recorded beside it.
    try:
        text, duration = _timed(host, script(parts), ctx.sudo)
        found = split_sections(text, {p.name: p.timeout_s for p in parts})
    except KilnError as exc:
        return fail_host(host, f"node {node}: burn-in: {exc}")
    dcgm, nccl = found.get("dcgm"), found.get("nccl")
    nccl_run = read_nccl_run(nccl.text if nccl else "", nccl.rc if nccl else None,
                             bool(nccl and nccl.timed_out), duration,
                             burnin.single_node_all_reduce.size_bytes)
    ib_runs = []
    for hca in hcas:
        part = found.get(f"ib-{hca}")
        if part is not None:
            ib_runs.append(read_ib_write_bw_run(part.text, part.rc, part.timed_out, duration,
                                                hca, size=burnin.ib_write_bw_size_bytes))
    results = judge_single_node(
        node, burnin, nccl=nccl_run, ib=ib_runs, hcas=hcas,
        dcgm_output=dcgm.text if dcgm else "", dcgm_duration_s=duration,
        dcgm_timed_out=bool(dcgm and dcgm.timed_out), gpus=ctx.manifest.topology.gpu.count)
    return record_and_settle(host, Combined.of(results), str(ctx.ledger_path),
                             f"node {node}: burn-in (single node)")


@operation(is_idempotent=False)
def single_node_burnin():  # noqa: ANN201
    """dcgmi diag, all_reduce_perf on 8 GPUs and ib_write_bw per HCA, judged and recorded."""
    if not node_readable():
        yield preview("the single-node burn-in")
        return
    ctx = node_context(host)
    if _leave_be(ctx):
        return
    try:
        topology = ctx.manifest.topology.hca
    except KilnError as exc:
        yield fail(f"node {ctx.label}: {exc}")
        return
    hcas = compute_hcas(host.get_fact(InfinibandSysfs), topology) if topology.count else []
    yield FunctionCommand(_run_single, (hcas,), {})


# --- multi node ---------------------------------------------------------------------------

class _Coordination:
    """The multi-node burn-in of one operation in one run: who takes part (noted while the
    run plans) and, once it ran, every node's result."""

    def __init__(self) -> None:
        self.participants: dict[str, multinode.MpiNode] = {}
        self.hosts: dict[str, Host] = {}
        self.started = False
        self.outcome: AsyncResult = AsyncResult()


# One multi-node burn-in per run (pyinfra State), kept as long as the run is.
_RUNS: weakref.WeakKeyDictionary[Any, _Coordination] = weakref.WeakKeyDictionary()
_GUARD = threading.Lock()


def _coordination(run: Any) -> _Coordination:
    with _GUARD:
        return _RUNS.setdefault(run, _Coordination())


def _pair_run(first: Host, sudo: bool, command: str, burnin: Burnin) -> NcclRun:
    """One pair's job, launched on its first node; whatever happens, a classified run."""
    part = Section("nccl-pair", command, burnin.timeouts.nccl_s)
    size = burnin.two_node_all_reduce.size_bytes
    started = time.monotonic()
    try:
        text, duration = _timed(first, script([part]), sudo)
        found = split_sections(text, {part.name: part.timeout_s}).get(part.name)
    except Exception as exc:  # noqa: BLE001 - an unreachable node is the launcher's failure
        return NcclRun(RunClass.LAUNCHER, None, None, None, None, time.monotonic() - started,
                       None, f"could not launch on {first.name}: "
                       f"{str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}")
    if found is None:
        return NcclRun(RunClass.LAUNCHER, None, None, None, None, duration, None,
                       f"the launch on {first.name} printed nothing")
    return read_nccl_run(found.text, found.rc, found.timed_out, duration, size)


def _rails(target: Host, topology: HCATopology) -> tuple[str, ...]:
    return tuple(compute_hcas(target.get_fact(InfinibandSysfs), topology)) \
        if topology.count else ()


def _run_multi(run: Any, coordination: _Coordination, leader: Host) -> dict[str, Any]:
    ctx = node_context(leader)
    burnin = ctx.manifest.burnin
    names = sorted(coordination.participants)
    # Each node's rails (NCCL_IB_HCA), read from all of them at once.
    reads = {n: gevent.spawn(_rails, coordination.hosts[n],
                             node_context(coordination.hosts[n]).manifest.topology.hca)
             for n in names}
    gevent.joinall(list(reads.values()))
    for name, read in reads.items():
        if read.successful():
            node = coordination.participants[name]
            coordination.participants[name] = multinode.MpiNode(node.name, node.address,
                                                                read.value)
    options = list(ctx.get("kiln_burnin_mpi_options") or [])
    topology = {n: leaf for n in names
                if (leaf := node_context(coordination.hosts[n]).get("kiln_leaf"))} or None
    seed = ctx.get("kiln_burnin_seed")
    rng = random.Random(seed) if seed is not None else random.Random()

    def run_round(number: int, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], NcclRun]:
        jobs = {}
        for a, b in pairs:
            first = coordination.hosts[a]
            command = multinode.mpirun_command(coordination.participants[a],
                                               coordination.participants[b], burnin, options)
            jobs[(a, b)] = gevent.spawn(_pair_run, first, node_context(first).sudo, command,
                                        burnin)
        gevent.joinall(list(jobs.values()))
        return {pair: job.get() for pair, job in jobs.items()}

    def log(line: str) -> None:
        leader.log(line, log_func=logger.info)

    done = multinode.isolate(names, run_round, burnin, rng, topology, log)
    for line in multinode.summary(done):
        leader.log(line, log_func=logger.warning if done.report.quarantined else logger.info)
    return multinode.node_results(done, burnin)


def _join_multi(state: State, host: Host) -> bool:
    coordination = _coordination(state)
    node = node_context(host).label
    if not coordination.started:
        coordination.started = True
        # Those noted while planning that are still in the run (a node that failed its
        # single-node burn-in has left it): they all run this operation now, at once.
        active = {h.name for h in state.inventory.get_active_hosts()}
        for name in [n for n, h in list(coordination.hosts.items()) if h.name not in active]:
            del coordination.participants[name]
            del coordination.hosts[name]
        try:
            coordination.outcome.set(_run_multi(state, coordination, host))
        except Exception as exc:  # noqa: BLE001 - every waiting node hears what went wrong
            coordination.outcome.set_exception(exc)
    try:
        results = coordination.outcome.get()
    except Exception as exc:  # noqa: BLE001
        return fail_host(host, f"node {node}: the multi-node burn-in failed: {exc}")
    result = results.get(node)
    if result is None:
        return fail_host(host, f"node {node}: the multi-node burn-in did not test it")
    return record_and_settle(host, Combined.of([result]), str(node_context(host).ledger_path),
                             f"node {node}: burn-in (multi node)")


def take_part() -> None:
    """Note this node as a participant of the run's multi-node burn-in. Called while the
    deploy plans (not inside the operation: with -y pyinfra runs an operation's body only
    when it executes, and by then the first node may have started the run). Reads nothing
    from the node (it may not be connected yet): its rails are read when the run starts."""
    ctx = node_context(host)
    if not _wanted(ctx):
        return
    coordination = _coordination(current_state._get_module())
    coordination.participants[ctx.label] = multinode.MpiNode(
        ctx.label, str(ctx.get("kiln_burnin_address") or ctx.label))
    coordination.hosts[ctx.label] = host._get_module()


@operation(is_idempotent=False)
def multi_node_burnin():  # noqa: ANN201
    """This node in the run's two-node all_reduce_perf isolation; its verdict recorded."""
    if not node_readable():
        yield preview("the multi-node burn-in")
        return
    ctx = node_context(host)
    if _leave_be(ctx):
        return
    yield FunctionCommand(_join_multi, (), {})

"""Simulated nccl-tests `all_reduce_perf`, single node or across nodes under `mpirun`.

Output has nccl-tests 2.x's layout (header, "# Using devices" rank lines, the
`redop root … #wrong` columns, the closing "Out of bounds" and "Avg bus bandwidth" lines).
Bandwidth comes from the participants' simulated hardware: ≈470 GB/s busbw at 8 GiB on one
8-GPU node (NVLS), ≈385 GB/s across nodes (ring over 8×400G), each lowered by NVLink and
HCA faults. Under mpirun with mpi4py importable (Debian python3-mpi4py), every process
allgathers its node's GPUs and HCAs; each process drives the devices nccl-tests would give
it (local rank × -g onwards: `-np 32 -N 8 -g 1` is one rank per GPU, `-np 4 -g 8` one
process per node), so a run reflects the state of every GPU and HCA that takes part. Rank 0
prints, as in the real tool; every rank exits with the run's status.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..view import View, driver_problem, load_view, run_tool
from ._perf import ib_factor, nvlink_factor

NCCL_VERSION_FILE = "/usr/share/kiln-hwsim/nccl-version"
DEFAULT_NCCL_VERSION = "2.26.5+cuda12.8"
NVLS_BUSBW = 470.0  # 8×H100 on NVSwitch with NVLS, 8 GiB
NVLINK_RING_BUSBW = 360.0  # fewer than 8 GPUs on one node: ring over NVLink
IB_RING_BUSBW = 385.0  # 2+ nodes, ring over 8×400G NDR
# NCCL's communicator setup between the rank lines and the first result (seconds on a
# real cluster; shortened here).
COMM_INIT_SECONDS = 0.2


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    text = text.strip()
    if text and text[-1].upper() in units:
        return int(float(text[:-1]) * units[text[-1].upper()])
    return int(text)


def _options(argv: list[str]) -> dict[str, Any]:
    opts = {"b": "32M", "e": "32M", "f": "2", "g": "1", "n": "20", "w": "5", "c": "1",
            "t": "1", "i": "0", "G": "0", "a": "1"}
    long_names = {"minbytes": "b", "maxbytes": "e", "stepfactor": "f", "ngpus": "g",
                  "iters": "n", "warmup_iters": "w", "check": "c", "nthreads": "t",
                  "stepbytes": "i", "cudagraph": "G", "agg_iters": "a"}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--"):
            name, sep, value = arg[2:].partition("=")
            key = long_names.get(name)
            if key is None:
                i += 1 + (0 if sep else 1)
                continue
            if not sep:
                value = argv[i + 1] if i + 1 < len(argv) else ""
                i += 1
            opts[key] = value
        elif arg.startswith("-") and len(arg) >= 2:
            key = arg[1]
            value = arg[2:] or (argv[i + 1] if i + 1 < len(argv) else "")
            if not arg[2:]:
                i += 1
            opts[key] = value
        i += 1
    return opts


def _sizes(opts: dict[str, Any]) -> list[int]:
    lo, hi = parse_size(opts["b"]), parse_size(opts["e"])
    step, factor = parse_size(opts["i"]), int(opts["f"])
    sizes, size = [], lo
    while size <= hi:
        sizes.append(size)
        if step > 0 and factor <= 1:
            size += step
        else:
            size = size * max(factor, 2) if size else 1 if factor > 1 else size + max(step, 1)
            if size == 0:
                break
    return sizes


def _time_str(us: float) -> str:
    if us >= 10000:
        return f"{us:7.0f}"
    if us >= 100:
        return f"{us:7.1f}"
    return f"{us:7.2f}"


def _jitter(key: str) -> float:
    digest = hashlib.sha256(key.encode()).digest()
    return 1.0 + (digest[0] / 255.0 - 0.5) * 0.01


def _nccl_version() -> str:
    try:
        return Path(NCCL_VERSION_FILE).read_text(encoding="utf-8").strip() or DEFAULT_NCCL_VERSION
    except OSError:
        return DEFAULT_NCCL_VERSION


def _peak_busbw(records: list[dict[str, Any]], nranks: int) -> tuple[float, float]:
    """(busbw GB/s at large sizes, latency us) for this set of participants."""
    hosts = {r["host"] for r in records}
    nvlink = min(r["health"]["nvlink"] for r in records)
    if len(hosts) == 1:
        base = NVLS_BUSBW if nranks == 8 else NVLINK_RING_BUSBW
        return base * nvlink, 12.0
    ib = min(r["health"]["ib"] for r in records)
    return IB_RING_BUSBW * min(ib, nvlink), 28.0 + 2.0 * len(hosts)


class World:
    """The MPI job this process belongs to: mpi4py's COMM_WORLD under mpirun, else just us."""

    def __init__(self) -> None:
        size = int(os.environ.get("OMPI_COMM_WORLD_SIZE", os.environ.get("PMI_SIZE", "1")))
        self.rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("PMI_RANK", "0")))
        self._comm: Any = None
        if size <= 1:
            return
        try:
            from mpi4py import MPI  # type: ignore[import-not-found]
        except ImportError:
            sys.stderr.write("all_reduce_perf (kiln lab): mpi4py is not installed; this rank only "
                             "knows its own node (install python3-mpi4py on the nodes)\n")
            return
        self._comm = MPI.COMM_WORLD
        self.rank = self._comm.Get_rank()

    @property
    def launched(self) -> bool:
        """Whether this process is one of an MPI job's (its output goes through mpirun)."""
        return self._comm is not None

    def allgather(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        """Every process's record, in rank order (only ours without MPI)."""
        return self._comm.allgather(record) if self._comm is not None else [record]

    def barrier(self) -> None:
        """Wait for every rank. Rank 0 prints the report first, so that a rank exiting
        non-zero cannot make mpirun abort the job before the report is out. Waiting ranks
        sleep rather than spin in MPI's progress loop: 31 spinning ranks on a small machine
        starve the daemon that forwards rank 0's output."""
        if self._comm is None:
            return
        request = self._comm.Ibarrier()
        while not request.Test():
            time.sleep(0.005)


def process_record(view: View, host: str, pid: int, ngpus: int) -> dict[str, Any]:
    """What one process tells the others: its node's GPUs (each one's NVLink share and
    whether it computes wrong results) and its node's share of the inter-node bandwidth."""
    usable = driver_problem(view) is None
    wrong = set(view.profile["sim"]["wrong_results"])
    gpus = [
        {"index": g["index"], "bus": int(g["pci_bus_id"][9:11], 16), "name": g["name"],
         "nvlink": nvlink_factor(view, [g["index"]]), "wrong": g["index"] in wrong}
        for g in view.gpus
    ] if usable else []
    # On an NVSwitch node CUDA refuses to start until the fabric manager has registered the
    # GPUs: cudaErrorSystemNotReady (802), "system not yet initialized" (the fault
    # fabric-manager-down at boot; pytorch issue 35710, wilicc/gpu-burn issue 92 on H100).
    fabric_ok = view.profile["sim"]["fabric"]["state"] == "Completed"
    return {"host": host, "pid": pid, "ngpus": ngpus, "driver_ok": usable,
            "fabric_ok": fabric_ok, "gpus": gpus,
            "ib": ib_factor(view), "flaky_fail": view.flaky_fails("all_reduce_perf")}


def assign_devices(records: list[dict[str, Any]]) -> list[list[int]]:
    """Each process's CUDA devices, as nccl-tests picks them: its local rank (how many
    processes of the job come before it on its host) times its -g, and the next -g."""
    seen: dict[str, int] = {}
    devices = []
    for record in records:
        local_rank = seen.get(record["host"], 0)
        seen[record["host"]] = local_rank + 1
        first = local_rank * record["ngpus"]
        devices.append(list(range(first, first + record["ngpus"])))
    return devices


def _setup_failure(record: dict[str, Any], devices: list[int]) -> list[str]:
    """The CUDA error nccl-tests prints when a process cannot open its devices."""
    if not record["driver_ok"]:
        reason = "system has unsupported display driver / cuda driver combination"
    elif not record.get("fabric_ok", True):
        reason = "system not yet initialized"
    elif devices and devices[-1] >= len(record["gpus"]):
        reason = "invalid device ordinal"
    else:
        return []
    return [f"{record['host']}: Test CUDA failure common.cu:1028 '{reason}'",
            f" .. {record['host']} pid {record['pid']}: Test failure common.cu:882"]


def participants(records: list[dict[str, Any]],
                 devices: list[list[int]]) -> list[dict[str, Any]]:
    """Per process: its host and the health of the devices it drives."""
    out = []
    for record, devs in zip(records, devices, strict=True):
        gpus = [record["gpus"][d] for d in devs]
        out.append({"host": record["host"], "health": {
            "nvlink": min((g["nvlink"] for g in gpus), default=1.0),
            "ib": record["ib"],
            "wrong": any(g["wrong"] for g in gpus),
        }})
    return out


def _flaky_node(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The first flaky node whose coin came up: one draw per node and run (its first
    process's), however many processes the node holds."""
    first_on_host: dict[str, dict[str, Any]] = {}
    for record in records:
        first_on_host.setdefault(record["host"], record)
    return next((r for r in first_on_host.values() if r["flaky_fail"]), None)


def _header(opts: dict[str, Any], records: list[dict[str, Any]],
            devices: list[list[int]]) -> list[str]:
    rank_lines = []
    for record, devs in zip(records, devices, strict=True):
        for dev in devs:
            gpu = record["gpus"][dev]
            rank_lines.append(f"#  Rank {len(rank_lines):2d} Group  0 Pid {record['pid']:6d} on "
                              f"{record['host']} device {dev:2d} [0x{gpu['bus']:02x}] "
                              f"{gpu['name']}")
    return [f"# nThread {opts['t']} nGpus {opts['g']} minBytes {parse_size(opts['b'])} maxBytes "
            f"{parse_size(opts['e'])} step: {opts['f']}(factor) warmup iters: {opts['w']} "
            f"iters: {opts['n']} agg iters: {opts['a']} validation: {opts['c']} graph: "
            f"{opts['G']}", "#", "# Using devices", *rank_lines,
            f"NCCL version {_nccl_version()}", "#",
            "#                                                              out-of-place"
            "                       in-place",
            "#       size         count      type   redop    root     time   algbw   busbw"
            " #wrong     time   algbw   busbw #wrong",
            "#        (B)    (elements)                               (us)  (GB/s)  (GB/s)"
            "            (us)  (GB/s)  (GB/s)"]


def _table(opts: dict[str, Any], ranks: list[dict[str, Any]],
           nranks: int) -> tuple[list[str], list[float], int]:
    """The result rows and closing lines, the seconds the real tool measures each row
    for (warmup and timed iterations), and how many wrong elements the rows count."""
    peak, latency = _peak_busbw(ranks, nranks)
    factor = 2 * (nranks - 1) / nranks if nranks > 1 else 0.0
    wrong = any(r["health"]["wrong"] for r in ranks) and opts["c"] != "0"
    warmup, iters = int(opts["w"]), int(opts["n"])
    busbws: list[float] = []
    wrong_total = 0
    key_base = ",".join(sorted({r["host"] for r in ranks}))
    out, seconds = [], []
    for size in _sizes(opts):
        count = size // 4
        cells, times = [], []
        for place in ("out", "in"):
            jit = _jitter(f"{key_base}/{size}/{place}")
            if factor and peak > 0:
                algbw_peak = peak / factor
                time_us = latency * jit + size / (algbw_peak * 1e3) * jit
            else:
                time_us = latency * jit + size / 1.5e6
            algbw = size / (time_us * 1e3) if time_us else 0.0
            busbw = algbw * factor
            n_wrong = max(1, count // 4096) if wrong and count else 0
            wrong_total += n_wrong
            busbws.append(busbw)
            times.append(time_us)
            check = str(n_wrong) if opts["c"] != "0" else "N/A"
            cells.append(f"  {_time_str(time_us)}  {algbw:6.2f}  {busbw:6.2f}  {check:>5}")
        out.append(f"{size:12d}  {count:12d}  {'float':>8}  {'sum':>6}  {-1:6d}" + "".join(cells))
        seconds.append(((warmup + iters) * times[0] + iters * times[1]) * 1e-6)
    avg = sum(busbws) / len(busbws) if busbws else 0.0
    out.append(f"# Out of bounds values : {wrong_total} {'FAILED' if wrong_total else 'OK'}")
    out.append(f"# Avg bus bandwidth    : {avg:g}")
    out.append("#")
    return out, seconds + [0.0] * 3, wrong_total


@dataclass
class Outcome:
    """What one process of a run does: its exit status (the same on every rank), the
    lines it prints, and after each line how long the real tool works before the next."""

    status: int
    lines: list[str] = field(default_factory=list)
    pauses: list[float] = field(default_factory=list)


def outcome(opts: dict[str, Any], records: list[dict[str, Any]], me: int,
            reports: bool) -> Outcome:
    """Process `me`'s part in a run by `records`' processes: the reporting one (rank 0)
    prints the report, a process that cannot open its devices prints its own CUDA error."""
    devices = assign_devices(records)
    if any(_setup_failure(r, d) for r, d in zip(records, devices, strict=True)):
        lines = _setup_failure(records[me], devices[me])
        return Outcome(1, lines, [0.0] * len(lines))
    header = _header(opts, records, devices)
    # After the rank lines the real tool sets up its NCCL communicators.
    header_pauses = [COMM_INIT_SECONDS if line.startswith("NCCL version") else 0.0
                     for line in header]
    flaky = _flaky_node(records)
    if flaky is not None:
        lines = header + [
            f"{flaky['host']}: Test NCCL failure common.cu:1279 'unhandled system error (run "
            "with NCCL_DEBUG=INFO for details) / '",
            f" .. {flaky['host']} pid {flaky['pid']}: Test failure common.cu:1100"]
        return Outcome(1, lines, header_pauses + [0.0, 0.0]) if reports else Outcome(1)
    nranks = sum(len(d) for d in devices)
    table, seconds, wrong_total = _table(opts, participants(records, devices), nranks)
    status = 1 if wrong_total else 0
    if not reports:
        return Outcome(status)
    return Outcome(status, header + table, header_pauses + seconds)


def run(view: View, argv: list[str], world: World | None = None) -> int:
    opts = _options(argv)
    world = world or World()
    local = process_record(view, socket.gethostname(), os.getpid(), int(opts["g"]))
    records = world.allgather(local)
    # Without MPI, a process of a larger job knows only itself.
    me = world.rank if len(records) > 1 else 0
    result = outcome(opts, records, me, reports=world.rank == 0)
    # A line at a time, at the real tool's pace, when a launcher forwards the output:
    # OpenMPI 4's --tag-output tags every chunk its daemon reads, so a burst of output
    # read mid-line gets a tag inside a line. (Run directly, nothing re-chunks the output
    # and the pace would only cost time.)
    for line, pause in zip(result.lines, result.pauses, strict=True):
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
        if world.launched and pause:
            time.sleep(pause)
    world.barrier()
    return result.status


def _main(argv: list[str]) -> int:
    return run(load_view(), argv)


def main(argv: list[str] | None = None) -> int:
    return run_tool(_main, argv)

"""Simulated nccl-tests `all_reduce_perf`, single node or across nodes under `mpirun`.

Output has nccl-tests 2.x's layout (header, "# Using devices" rank lines, the
`redop root … #wrong` columns, the closing "Out of bounds" and "Avg bus bandwidth" lines).
Bandwidth comes from the participants' simulated hardware: ≈470 GB/s busbw at 8 GiB on one
8-GPU node (NVLS), ≈385 GB/s across nodes (ring over 8×400G), each lowered by NVLink and
HCA faults. Under mpirun with mpi4py importable (Debian python3-mpi4py), ranks allgather
their node's health, so a run reflects every participant; rank 0 prints, as in the real tool.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
from pathlib import Path
from typing import Any

from ..view import View, driver_problem, load_view, run_tool
from ._perf import health

NCCL_VERSION_FILE = "/usr/share/kiln-hwsim/nccl-version"
DEFAULT_NCCL_VERSION = "2.26.5+cuda12.8"
NVLS_BUSBW = 470.0  # 8×H100 on NVSwitch with NVLS, 8 GiB
NVLINK_RING_BUSBW = 360.0  # fewer than 8 GPUs on one node: ring over NVLink
IB_RING_BUSBW = 385.0  # 2+ nodes, ring over 8×400G NDR


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


def _gather(local: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rank's record: mpi4py's allgather under mpirun, just ours otherwise."""
    size = int(os.environ.get("OMPI_COMM_WORLD_SIZE", os.environ.get("PMI_SIZE", "1")))
    if size <= 1:
        return [local]
    try:
        from mpi4py import MPI  # type: ignore[import-not-found]
    except ImportError:
        sys.stderr.write("all_reduce_perf (kiln lab): mpi4py is not installed; this rank only "
                         "knows its own node (install python3-mpi4py on the nodes)\n")
        return [local]
    return MPI.COMM_WORLD.allgather(local)


def _rank() -> int:
    return int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("PMI_RANK", "0")))


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


def run(view: View, argv: list[str]) -> int:
    opts = _options(argv)
    ngpus = int(opts["g"])
    host = socket.gethostname()
    pid = os.getpid()
    local_gpus = list(range(ngpus))
    problem = driver_problem(view)
    if problem is not None or ngpus > len(view.gpus):
        reason = ("invalid device ordinal" if problem is None
                  else "system has unsupported display driver / cuda driver combination")
        sys.stdout.write(f"{host}: Test CUDA failure common.cu:1028 '{reason}'\n"
                         f" .. {host} pid {pid}: Test failure common.cu:882\n")
        return 1
    local = {"host": host, "pid": pid, "ngpus": ngpus, "gpus": [
        {"index": g["index"], "bus": int(g["pci_bus_id"][9:11], 16), "name": g["name"]}
        for g in view.gpus[:ngpus]], "health": health(view, local_gpus)}
    records = _gather(local)
    # each process on a host takes the next ngpus devices of that host
    seen: dict[str, int] = {}
    rank_lines = []
    rank = 0
    for record in records:
        first = seen.get(record["host"], 0)
        seen[record["host"]] = first + record["ngpus"]
        for j in range(record["ngpus"]):
            dev = first + j
            gpu = record["gpus"][j] if j < len(record["gpus"]) else record["gpus"][-1]
            rank_lines.append(f"#  Rank {rank:2d} Group  0 Pid {record['pid']:6d} on "
                              f"{record['host']} device {dev:2d} [0x{gpu['bus']:02x}] "
                              f"{gpu['name']}")
            rank += 1
    nranks = rank
    if _rank() != 0:
        failed = local["health"]["flaky_fail"]
        return 1 if failed or any(r["health"]["wrong"] for r in records) else 0
    out = [f"# nThread {opts['t']} nGpus {ngpus} minBytes {parse_size(opts['b'])} maxBytes "
           f"{parse_size(opts['e'])} step: {opts['f']}(factor) warmup iters: {opts['w']} "
           f"iters: {opts['n']} agg iters: {opts['a']} validation: {opts['c']} graph: "
           f"{opts['G']}", "#", "# Using devices", *rank_lines,
           f"NCCL version {_nccl_version()}"]
    out += ["#",
            "#                                                              out-of-place"
            "                       in-place",
            "#       size         count      type   redop    root     time   algbw   busbw"
            " #wrong     time   algbw   busbw #wrong",
            "#        (B)    (elements)                               (us)  (GB/s)  (GB/s)"
            "            (us)  (GB/s)  (GB/s)"]
    flaky = [r for r in records if r["health"]["flaky_fail"]]
    if flaky:
        bad = flaky[0]
        sys.stdout.write("\n".join(out) + "\n")
        sys.stdout.write(f"{bad['host']}: Test NCCL failure common.cu:1279 'unhandled system "
                         "error (run with NCCL_DEBUG=INFO for details) / '\n"
                         f" .. {bad['host']} pid {bad['pid']}: Test failure common.cu:1100\n")
        return 1
    peak, latency = _peak_busbw(records, nranks)
    factor = 2 * (nranks - 1) / nranks if nranks > 1 else 0.0
    wrong = any(r["health"]["wrong"] for r in records) and opts["c"] != "0"
    busbws: list[float] = []
    wrong_total = 0
    key_base = ",".join(sorted({r["host"] for r in records}))
    for size in _sizes(opts):
        count = size // 4
        cells = []
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
            check = str(n_wrong) if opts["c"] != "0" else "N/A"
            cells.append(f"  {_time_str(time_us)}  {algbw:6.2f}  {busbw:6.2f}  {check:>5}")
        out.append(f"{size:12d}  {count:12d}  {'float':>8}  {'sum':>6}  {-1:6d}" + "".join(cells))
    avg = sum(busbws) / len(busbws) if busbws else 0.0
    out.append(f"# Out of bounds values : {wrong_total} {'FAILED' if wrong_total else 'OK'}")
    out.append(f"# Avg bus bandwidth    : {avg:g}")
    out.append("#")
    sys.stdout.write("\n".join(out) + "\n")
    return 1 if wrong_total else 0


def _main(argv: list[str]) -> int:
    return run(load_view(), argv)


def main(argv: list[str] | None = None) -> int:
    return run_tool(_main, argv)

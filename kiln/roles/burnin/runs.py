"""One burn-in run, read as it really comes, and classified.

    read_nccl_run(output, rc, timed_out, duration_s, size) -> NcclRun
    read_ib_write_bw_run(output, rc, timed_out, duration_s, hca) -> IbRun
    settle(attempts) -> the run that stands after the launcher's one retry

A run is what a burn-in operation captured: the tool's output as the launcher delivered it
(stdout and stderr together), its exit status (None where the launcher reported none), whether
the deadline killed it, and how long it ran. The classes are issue 15's failure classes:

    OK             the report is there; its numbers are read (floors are the judges' job)
    LAUNCHER       mpirun/srun/ssh failed (no slots, SSH refused, a daemon lost): not the
                   node's fault; retried once, then COULD_NOT_TEST
    TIMEOUT        the deadline killed the job (whatever it printed), or nccl-tests' own -T
                   watchdog saw a collective hang
    WRONG_RESULTS  nccl-tests counted wrong elements (#wrong > 0, "Out of bounds values")
    BELOW_FLOOR    set by the judges: the numbers are under the SKU's floor
    CRASH          the tool failed on its own: "Test NCCL failure", "Test CUDA failure", a
                   process dead of a signal (segfault, bus error), an "NCCL WARN … error" or a
                   non-zero exit with the report incomplete, perftest's errors (a port Down,
                   the HCA missing, completions with error)
    COULD_NOT_TEST the run says nothing about the node: output not understood, the tool
                   refused its arguments, the launcher failed on its retry too
    OUTLIER        set by the fleet judging: fine alone, far below the fleet's median

Every run's `message` is one line a person reads; `line` is the tool's or launcher's own
line the class rests on (quoted by the judges); `evidence` holds the values read.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

from kiln.core.parsing import LauncherError, ParseError
from kiln.roles.burnin.parsers import (
    crash_lines,
    launcher_failure,
    parse_ib_write_bw,
    parse_nccl_tests,
    perftest_errors,
    strip_launcher_prefix,
)

# A launcher failure is retried once: the second attempt is the last.
MAX_ATTEMPTS = 2


class RunClass(StrEnum):
    OK = "ok"
    LAUNCHER = "launcher"
    TIMEOUT = "timeout"
    WRONG_RESULTS = "wrong-results"
    BELOW_FLOOR = "below-floor"
    OUTLIER = "outlier"
    CRASH = "crash"
    COULD_NOT_TEST = "could-not-test"

    @property
    def tested(self) -> bool:
        """Whether the run says something about the node (pass or fail)."""
        return self not in (RunClass.LAUNCHER, RunClass.TIMEOUT, RunClass.COULD_NOT_TEST)

    @property
    def retry(self) -> bool:
        """Whether the run is tried once more before it counts (the launcher's failures)."""
        return self == RunClass.LAUNCHER


@dataclass(frozen=True)
class NcclRun:
    run_class: RunClass
    busbw_gbps: float | None  # out-of-place, GB/s as nccl-tests prints busbw
    algbw_gbps: float | None
    wrong: int | None  # wrong elements counted over the run (None: validation off or no report)
    size: int | None  # bytes of the row read (None: no row)
    duration_s: float
    nccl_version: str | None
    message: str
    evidence: Mapping[str, Any] = field(default_factory=dict)
    line: str | None = None  # the tool's or launcher's line the class rests on


@dataclass(frozen=True)
class IbRun:
    run_class: RunClass
    hca: str
    bw_average_gbps: float | None  # Gb/s
    bw_peak_gbps: float | None
    size: int | None  # message size of the row read
    duration_s: float
    message: str
    evidence: Mapping[str, Any] = field(default_factory=dict)
    line: str | None = None


Run = TypeVar("Run", NcclRun, IbRun)


def settle(attempts: Sequence[Run]) -> Run:
    """The run that stands: the last attempt; a launcher failure on the last allowed attempt
    (MAX_ATTEMPTS) is COULD_NOT_TEST, saying how many times the launcher failed."""
    if not attempts:
        raise ValueError("settle() needs at least one attempt")
    last = attempts[-1]
    if last.run_class == RunClass.LAUNCHER and len(attempts) >= MAX_ATTEMPTS:
        return dataclasses.replace(
            last, run_class=RunClass.COULD_NOT_TEST,
            message=f"could not test: the launcher failed {len(attempts)} times; last: "
                    f"{last.message}",
            evidence={**last.evidence, "attempts": len(attempts)})
    return last


def human_size(size: int | None) -> str:
    """8589934592 -> "8 GiB"; sizes that are not a whole unit stay in bytes."""
    if size is None:
        return "?"
    for unit, factor in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} B"


def _tail(text: str, limit: int = 2000) -> str:
    return text[-limit:]


# --- nccl-tests ---------------------------------------------------------------------------

_WARN_ERROR = re.compile(r"\b(?:error|failure|failed|fatal|abort)", re.IGNORECASE)
_SIGNAL_NAMED = re.compile(r"Segmentation fault|Bus error|Aborted|Illegal instruction|"
                           r"Floating point exception|signal \d+")
_GPUS_FOUND = re.compile(r"Invalid number of GPUs: (\d+) requested but only (\d+) were found")


def _crash_line(lines: Sequence[str]) -> str | None:
    """The most telling of `lines` (a crash's): one naming the signal, else the first."""
    return next((x for x in lines if _SIGNAL_NAMED.search(x)), lines[0] if lines else None)


def _tool_failure(failures: Sequence[str]) -> str | None:
    """The failure line that says why ("Test NCCL failure … 'reason'"), not the " .. host pid
    N: Test failure common.cu:N" trace lines that follow it."""
    for failure in failures:
        if not failure.lstrip().startswith(".."):
            return failure
    return failures[0] if failures else None


def _error_warning(warnings: Sequence[str]) -> str | None:
    return next((w for w in warnings if _WARN_ERROR.search(w.split("NCCL WARN", 1)[-1])), None)


def _nccl_evidence(parsed: Mapping[str, Any]) -> dict[str, Any]:
    ranks = parsed.get("ranks") or []
    rows = parsed.get("rows") or []
    return {
        "format": parsed.get("format"), "nccl_version": parsed.get("nccl_version"),
        "tests_version": parsed.get("tests_version"), "collective": parsed.get("collective"),
        "ranks": len(ranks), "hosts": sorted({str(r.get("host")) for r in ranks}),
        "devices": [r.get("bus_id") for r in ranks],
        "params": dict(parsed.get("params") or {}), "rows": len(rows),
        "sizes": [human_size(r["size"]) for r in rows[-4:]],
        "avg_busbw": parsed.get("avg_busbw"), "out_of_bounds": parsed.get("out_of_bounds"),
        "complete": parsed.get("complete"), "excerpt": parsed.get("excerpt"),
        "columns": parsed.get("columns"), "failures": list(parsed.get("failures") or [])[:6],
        "crashes": list(parsed.get("crashes") or [])[:6],
        "warnings": list(parsed.get("warnings") or [])[:6],
        "last_error": parsed.get("last_error"),
        "launcher_errors": list(parsed.get("launcher_errors") or [])[:3],
    }


def _wrong_total(parsed: Mapping[str, Any]) -> int | None:
    counted = [half.get("wrong") for row in parsed.get("rows") or []
               for half in (row["out_of_place"], row["in_place"])]
    known = [w for w in counted if w is not None]
    total = sum(known) if known else None
    oob = parsed.get("out_of_bounds")
    if oob is not None:
        return max(oob, total or 0)
    return total


def _merge_report(parsed: dict[str, Any] | None, report: str) -> dict[str, Any] | None:
    """The -J report's numbers (full precision) over stdout's, stdout's failures and
    launcher text kept."""
    try:
        doc = parse_nccl_tests(report)
    except ParseError:
        return parsed
    if not doc["rows"]:
        return parsed
    if parsed is None:
        return doc
    merged = dict(parsed)
    for key in ("rows", "avg_busbw", "out_of_bounds", "out_of_bounds_ok", "ranks"):
        if doc.get(key) not in (None, []):
            merged[key] = doc[key]
    merged["complete"] = parsed["complete"] or doc["complete"]
    merged["nccl_version"] = parsed.get("nccl_version") or doc.get("nccl_version")
    merged["format"] = "text+json"
    return merged


def _parsed(parser: Callable[[str], dict[str, Any]], output: str
            ) -> tuple[dict[str, Any] | None, LauncherError | None, ParseError | None]:
    """What the parser made of `output`: the report (a launcher error's partial one too),
    the launcher's error, or why it was not understood."""
    try:
        return parser(output), None, None
    except LauncherError as exc:
        return (exc.partial if isinstance(exc.partial, dict) else None), exc, None
    except ParseError as exc:
        return None, None, exc


def read_nccl_run(output: str, rc: int | None, timed_out: bool, duration_s: float,
                  size: int, *, report: str | None = None) -> NcclRun:
    """Classify one nccl-tests run (see the module docstring). `size` is the message size
    whose row is read (the SKU's floor size); `report` the JSON file the build wrote with -J,
    when it writes one."""
    parsed, launcher, unreadable = _parsed(parse_nccl_tests, output)
    if report:
        parsed = _merge_report(parsed, report)
    evidence: dict[str, Any] = {"rc": rc, "timed_out": timed_out,
                                "duration_s": round(duration_s, 3), "size_requested": size}
    if parsed is not None:
        evidence.update(_nccl_evidence(parsed))
    version = parsed.get("nccl_version") if parsed else None

    rows = parsed["rows"] if parsed else []
    row = next((r for r in reversed(rows) if r["size"] == size), None)
    size_found = row is not None
    if row is None and rows:
        row = rows[-1]
    evidence["size_found"] = size_found
    half = row["out_of_place"] if row else {}
    busbw, algbw = half.get("busbw"), half.get("algbw")
    wrong = _wrong_total(parsed) if parsed else None
    read_size = row["size"] if row else None

    def run(run_class: RunClass, message: str, line: str | None = None) -> NcclRun:
        if run_class != RunClass.OK:
            evidence["output_tail"] = _tail(output)
        evidence["class"] = str(run_class)
        return NcclRun(run_class, busbw, algbw, wrong, read_size, duration_s, version,
                       message, evidence, line)

    failures = list(parsed["failures"]) if parsed else []
    crashes = list(parsed["crashes"]) if parsed else crash_lines(output)
    watchdog = next((f for f in failures if "Test timeout" in f), None)
    if timed_out or watchdog:
        if watchdog and not timed_out:
            why = f"nccl-tests' watchdog saw a collective hang: {watchdog}"
        else:
            why = f"no result within the deadline: the job was killed after {duration_s:.0f} s"
        if not parsed:
            progress = "before it printed anything readable"
        elif rows:
            progress = (f"after {len(rows)} result rows (last: {human_size(rows[-1]['size'])} "
                        f"at busbw {rows[-1]['out_of_place']['busbw']} GB/s)")
        elif parsed.get("ranks"):
            progress = "before its first result (while NCCL set up its communicators)"
        else:
            progress = "before its first result"
        return run(RunClass.TIMEOUT, f"{why}, {progress}", watchdog)
    if crashes:
        line = _crash_line(crashes)
        return run(RunClass.CRASH, f"all_reduce_perf crashed: {line}", line)
    failure = _tool_failure(failures)
    if failure is not None:
        found = _GPUS_FOUND.search(failure)
        if found:
            evidence["gpus_requested"], evidence["gpus_found"] = map(int, found.groups())
        warning = _error_warning(parsed["warnings"]) if parsed else None
        detail = f" (first NCCL warning: {warning})" if warning else ""
        return run(RunClass.CRASH, f"nccl-tests failed: {failure}{detail}", failure)
    if launcher is not None:
        return run(RunClass.LAUNCHER, f"the launcher ({launcher.launcher}) failed, not the node: "
                   f"{launcher.text[:300]}", launcher.text[:300])
    if parsed and parsed["usage_errors"]:
        usage = parsed["usage_errors"][0]
        return run(RunClass.COULD_NOT_TEST, f"could not test: nccl-tests refused its arguments: "
                   f"{usage}", usage)
    if parsed is None:
        lines = [strip_launcher_prefix(x)[0].strip() for x in output.splitlines()]
        warning = next((x for x in lines if "NCCL WARN" in x and _WARN_ERROR.search(x)), None)
        if warning and rc not in (None, 0):
            return run(RunClass.CRASH, f"all_reduce_perf failed (exit {rc}): {warning}", warning)
        failed = next((x for x in lines if launcher_failure(x)), None)
        if failed:
            return run(RunClass.LAUNCHER, f"the launcher failed, not the node: {failed}", failed)
        return run(RunClass.COULD_NOT_TEST, f"could not test: nccl-tests output not understood "
                   f"(exit {rc}): {unreadable}", str(unreadable))
    if wrong:
        where = f" at {human_size(read_size)}" if read_size else ""
        oob = parsed.get("out_of_bounds")
        return run(RunClass.WRONG_RESULTS,
                   f"wrong results: {wrong} wrong elements{where} (nccl-tests' check failed)",
                   f"# Out of bounds values : {oob} FAILED" if oob else None)
    if not parsed["complete"]:
        warning = _error_warning(parsed["warnings"])
        if rc not in (None, 0) or warning:
            line = warning or _last_line(output)
            return run(RunClass.CRASH, f"all_reduce_perf exited with status {rc} before its report "
                       f"was complete: {line}", line)
        if not rows:
            return run(RunClass.COULD_NOT_TEST, "could not test: the capture holds no result row")
    if not rows:
        return run(RunClass.COULD_NOT_TEST, "could not test: the report holds no result row")
    ranks = evidence.get("ranks")
    message = (f"busbw {_gb(busbw)} GB/s at {human_size(read_size)} (algbw {_gb(algbw)} GB/s)"
               + (f" on {ranks} GPUs" if ranks else "") + f", NCCL {version or '?'}")
    if not size_found:
        message += f"; {human_size(size)} did not run: read at the last size instead"
    if parsed.get("excerpt"):
        message += "; an excerpt (no '# nThread' header)"
    return run(RunClass.OK, message)


def _gb(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f}"


def _last_line(output: str) -> str | None:
    lines = [strip_launcher_prefix(x)[0].strip() for x in output.splitlines()]
    return next((x for x in reversed(lines) if x), None)


# --- perftest ib_write_bw -----------------------------------------------------------------

# What perftest's error lines say about the HCA under test (first match wins).
_IB_CAUSES: tuple[tuple[str, RunClass, re.Pattern[str]], ...] = (
    ("connect", RunClass.LAUNCHER, re.compile(
        r"^Couldn't connect to|^Unable to init the socket connection|"
        r"^Unable to open file descriptor for socket")),
    ("port-down", RunClass.CRASH, re.compile(r"^Port number \d+ state is")),
    ("device-missing", RunClass.CRASH, re.compile(
        r"^Unable to find the Infiniband/RoCE device|^No IB devices found|"
        r"^IB device \S+ not found")),
    ("memory-registration", RunClass.CRASH, re.compile(
        r"Couldn't (?:allocate|register) MR|ibv_reg_(?:dmabuf_)?mr failed|Couldn't allocate GPU")),
    ("transport-error", RunClass.CRASH, re.compile(
        r"^Completion with error|^Failed status \d+|run_iter_bw|^Couldn't post send")),
)


def _ib_cause(errors: Sequence[str]) -> tuple[str, RunClass, str]:
    """(cause, class, the line) for perftest's error lines."""
    for cause, run_class, pattern in _IB_CAUSES:
        for error in errors:
            if pattern.search(error):
                return cause, run_class, error
    return "other", RunClass.CRASH, errors[0]


def read_ib_write_bw_run(output: str, rc: int | None, timed_out: bool, duration_s: float,
                         hca: str, *, size: int | None = None) -> IbRun:
    """Classify one ib_write_bw client run on `hca` (see the module docstring). `size`: the
    message size whose row is read (default: the last row, the usual single-size run)."""
    parsed, launcher, unreadable = _parsed(parse_ib_write_bw, output)
    evidence: dict[str, Any] = {"rc": rc, "timed_out": timed_out,
                                "duration_s": round(duration_s, 3), "hca": hca}
    rows: list[dict[str, Any]] = []
    if parsed is not None:
        rows = parsed["rows"]
        evidence.update({
            "device": parsed.get("device"), "link_type": parsed.get("link_type"),
            "units": parsed.get("units"), "rows": len(rows), "complete": parsed["complete"],
            "gpudirect": parsed.get("gpudirect"), "dmabuf": parsed.get("dmabuf"),
            "gpu_pcie": parsed.get("gpu_pcie"), "errors": list(parsed["errors"])[:6],
            "launcher_errors": list(parsed.get("launcher_errors") or [])[:3],
            "qps": parsed["info"].get("number_of_qps"), "mtu": parsed["info"].get("mtu")})
    row = None
    if rows:
        row = next((r for r in reversed(rows) if r["bytes"] == size), None) if size else None
        row = row or rows[-1]
    average = row["bw_average_gbps"] if row else None
    peak = row["bw_peak_gbps"] if row else None
    read_size = row["bytes"] if row else None

    def run(run_class: RunClass, message: str, line: str | None = None) -> IbRun:
        if run_class != RunClass.OK:
            evidence["output_tail"] = _tail(output)
        evidence["class"] = str(run_class)
        return IbRun(run_class, hca, average, peak, read_size, duration_s, message, evidence, line)

    if timed_out:
        progress = f"after {len(rows)} result rows" if rows else "before its first result"
        return run(RunClass.TIMEOUT, f"ib_write_bw on {hca}: no result within the deadline: "
                   f"killed after {duration_s:.0f} s, {progress}")
    errors = list(parsed["errors"]) if parsed else perftest_errors(output)
    if errors:
        cause, run_class, line = _ib_cause(errors)
        evidence["cause"] = cause
        if run_class == RunClass.LAUNCHER:
            return run(run_class, f"ib_write_bw on {hca} could not reach the other side of the "
                       f"test (not this HCA's fault): {line}", line)
        return run(run_class, f"ib_write_bw on {hca} failed: {line}", line)
    if launcher is not None:
        return run(RunClass.LAUNCHER, f"the launcher ({launcher.launcher}) failed, not {hca}: "
                   f"{launcher.text[:300]}", launcher.text[:300])
    if parsed is None:
        crashed = crash_lines(output)
        if crashed:
            line = _crash_line(crashed)
            return run(RunClass.CRASH, f"ib_write_bw on {hca} crashed: {line}", line)
        return run(RunClass.COULD_NOT_TEST, f"could not test {hca}: ib_write_bw output not "
                   f"understood (exit {rc}): {unreadable}", str(unreadable))
    device = parsed.get("device")
    if device and device != hca:
        return run(RunClass.COULD_NOT_TEST, f"could not test {hca}: the report is for {device}")
    if not rows:
        if rc not in (None, 0):
            line = _last_line(output)
            return run(RunClass.CRASH, f"ib_write_bw on {hca} exited with status {rc} before "
                       f"its first result: {line}", line)
        return run(RunClass.COULD_NOT_TEST, f"could not test {hca}: no result row")
    if not parsed["complete"] and rc not in (None, 0):
        line = _last_line(output)
        return run(RunClass.CRASH, f"ib_write_bw on {hca} exited with status {rc} before its "
                   f"report was complete: {line}", line)
    gpu = " (GPUDirect" + (", DMA-BUF)" if parsed.get("dmabuf") else ")") \
        if parsed.get("gpudirect") else ""
    return run(RunClass.OK, f"ib_write_bw on {hca}: {_gb(average)} Gb/s average, {_gb(peak)} "
               f"Gb/s peak at {human_size(read_size)}{gpu}")

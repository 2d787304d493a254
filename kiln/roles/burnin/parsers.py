"""Parsers for burn-in tool output: nccl-tests (`all_reduce_perf` & co.) and perftest's
`ib_write_bw`.

Pure functions, text in, plain data out; input that is not what the tool prints raises
`ParseError` naming the line.

parse_nccl_tests(text) -> dict
  Accepts the tool's stdout as printed directly, through `mpirun` (lines prefixed
  "[1,0]<stdout>:") or `srun --label` ("0: "), with NCCL_DEBUG=INFO lines interleaved,
  every column layout nccl-tests has printed (the old one with an `error` column, the
  2.13+ one with `redop root … #wrong`, with -C's `cputime`, -I's per-iteration columns and
  -S's timestamp), an excerpt cut from a log (the column header and rows, or rows alone),
  and the JSON report nccl-tests 2.17.4+ writes with `-J <file>.json` (recognised by its
  leading "{"; see parse_nccl_tests_json).
    format         "text" | "json"
    nccl_version   str | None         "2.16.2+cuda11.6" (from "NCCL version …", an INFO line
                                      saying it, or the "nccl-library=22907" code: "2.29.7")
    tests_version  str | None         "2.18.0" ("# nccl-tests version …", 2.17.4+)
    collective     str | None         "all_reduce_perf" ("# Collective test starting: …")
    json_output    str | None         where the build wrote its JSON ("# Writing JSON output to")
    params         {name: int}        from the "# nThread 1 nGpus 8 minBytes …" line:
                                      nthread, ngpus, minbytes, maxbytes, warmup_iters, iters,
                                      agg_iters, validation, graph, step, unalign (those printed)
    ranks          [{rank, group (int|None), pid, host, device, bus_id ("0x18" or
                     "0000:18:00", as printed), device_name}]
    layout         "wrong" (#wrong column) | "error" (old error column) | None (no table)
    columns        "header" (printed) | "inferred" (rows alone: see below) | None
    excerpt        bool               no "# nThread …" line: cut from a longer log
    rows           [row] in the order printed
      row: {size: int bytes, count: int, type: str, redop: str, root: int | None,
            out_of_place: {time_us, algbw, busbw: float (GB/s), wrong: int|None,
                           error: float|None},
            in_place: {…same…}}   (+ "timestamp" where -S printed one)
    avg_busbw      float | None       "# Avg bus bandwidth : N" (GB/s)
    avg_busbw_check str | None        "OK" | "FAILED" beside it (NCCL_TESTS_MIN_BW set)
    out_of_bounds  int | None         "# Out of bounds values : N OK"
    out_of_bounds_ok bool | None
    complete       bool               the "# Avg bus bandwidth" line was seen
    cut_line       str | None         the capture's last line, a row cut short, left out
    failures       [str]              the tool's own failure lines: "Test NCCL failure …",
                                      "Test CUDA failure …", " .. host pid N: Test failure …",
                                      "host: Test timeout (Ns) …" (its -T watchdog),
                                      "Invalid number of GPUs: 8 requested but only 7 were
                                      found."
    usage_errors   [str]              nccl-tests refusing its arguments ("invalid size
                                      specified for 'minbytes'", getopt's complaints)
    crashes        [str]              a process died of a signal: "Segmentation fault",
                                      "Bus error", OpenMPI's "*** Process received signal
                                      ***"/"Signal: …", "exited on signal 11", srun's "task 0:
                                      Segmentation fault"
    warnings       [str]              "NCCL WARN …" lines
    last_error     str | None         "# error: …" (ncclGetLastError at exit)
    launcher_messages [str]           what the launcher and its transport said that is not
                                      a failure: OpenMPI help boxes that warn (joined into
                                      one string each), "[host:pid] …" notices, srun's
                                      informational lines, ssh's "Warning: Permanently added",
                                      and in a capture tagged by mpirun's --tag-output, every
                                      untagged line (the ranks' output is all tagged, so the
                                      rest is mpirun's own or its remote shell's)
    launcher_errors [str]             the launcher's failure text (see below), when the
                                      tool's own report still says what happened
  Rows alone. An excerpt without the column header is read when the first row's shape says
  which layout it is: its value count (13: size count type redop root and twice time algbw
  busbw #wrong, or the old reduce's … error; 12: size count type redop|root and twice
  time algbw busbw error; 11: the old all_gather's size count type …; 21: 2.19's
  per-iteration columns), a type and a reduction nccl-tests names, integer size and count.
  `columns` is then "inferred"; any other row without a header is a ParseError naming it.
  busbw_at(result, size) -> float | None: out-of-place busbw at `size` bytes (last row).

parse_nccl_tests_json(text) -> dict
  nccl-tests' `-J` report (JSON_FILE_VERSION 1 to 3: {version, start_time, args, env,
  nccl_version (code), config {…, devices […]}, results [{size, count, type, redop, root,
  out_of_place|in_place {time|cpu_time, alg_bw, bus_bw, nwrong}, …}], out_of_bounds {count,
  okay}, average_bus_bandwidth {bandwidth, okay} (spelt "average_bus_bandwidith"/"bandwidith"
  before 2.17.9), errors [str], end_time}) in parse_nccl_tests' shape, `format` "json". Its
  booleans are the strings "true"/"false" as nccl-tests writes them. A report cut short (the
  run killed before nccl-tests closed the file) gives what it holds so far, `complete` false.

parse_ib_write_bw(text) -> dict   (also ib_read_bw/ib_send_bw: same table)
    test           str | None         "RDMA_Write BW Test"
    device         str | None         "mlx5_0"
    link_type      str | None         "IB" | "Ethernet"
    info           {snake_case header field: str}  every "Name : value" in the banner
    units          "Gb/sec" | "MB/sec"  as the table header says (--report_gbits or not)
    rows           [{bytes: int, iterations: int, bw_peak, bw_average: float (in `units`),
                     msg_rate_mpps: float, bw_peak_gbps, bw_average_gbps: float (Gb/s)}]
    bw_average_gbps float | None      of the last row (the usual single-size run)
    complete       bool               a rule closed the table after its last row
    errors         [str]              perftest's failure lines ("Couldn't connect to …",
                                      "Completion with error at client", "Failed status …")
    gpudirect      bool               the buffer was GPU memory (--use_cuda: "initializing
                                      CUDA", "allocated GPU buffer …"), so GPUDirect RDMA ran
    dmabuf         bool               … registered through DMA-BUF ("using DMA-BUF …")
    gpu_pcie       str | None         the GPU's PCIe address ("CUDA device 0: PCIe address
                                      is 8F:00")
    launcher_messages, launcher_errors  as for nccl-tests
  MB/sec is perftest's MiB/s (2**20 bytes); Gb/sec is 10**9 bits: converted accordingly.
  Read as real captures come: banner fields split by tabs (perftest 4.x) or runs of spaces
  (newer releases); CUDA/DMA-BUF set-up lines and the server's "Waiting for client to
  connect" box around the report; the server's and the client's report in one capture, one
  after the other or interleaved line by line (a row printed by both sides is kept once);
  a capture cut off inside the table (its rows so far, `complete` false). A run that failed
  after its banner gives no rows and its `errors`; text with neither banner nor table is a
  ParseError.
  perftest_errors(text) -> [str]: perftest's failure lines in any text, banner or not (what
  a run that failed before its banner printed: " Port number 1 state is Down", " Unable to
  find the Infiniband/RoCE device").

Launchers. Both parsers accept the launchers' line prefixes and recognise the launchers' own
failure text: OpenMPI's help boxes (between lines of 74 dashes: "mpirun was unable to launch
…", "ORTE was unable to reliably start one or more daemons", "There are not enough slots
…", "Your job has requested more processes than the ppr …", "mpirun noticed that process
rank N … exited on signal N", "Primary job terminated normally, but …"), Slurm's ("srun:
error: …", "srun: Job step aborted", "slurmstepd: error: …") and their remote shell's ("ssh:
connect to host … Connection refused", "Permission denied (publickey…)", "Host key
verification failed."). When that text is there and the tool's report is missing or cut
short without a failure of the tool's own (or a crash) to explain it, the parser raises
`LauncherError` (a ParseError subclass naming the launcher, with the partial result): the
launcher failed, not the node's hardware and not the parser. When the report is complete, or
the tool printed its own failure ("Test NCCL failure", "Completion with error") or died of a
signal (mpirun's "exited on signal 11 (Segmentation fault)" is a crash it relays), the
launcher's text is kept in `launcher_errors` and the result is returned.
"""

from __future__ import annotations

import json
import re
from typing import Any

from kiln.core.parsing import LauncherError, ParseError

_MPIRUN_PREFIX = re.compile(r"^\[\d+,\d+\]<(stdout|stderr)>:\s?")
_SRUN_PREFIX = re.compile(r"^\s*\d+:(?: |$)")
# OpenMPI 4's --tag-output tags each chunk it forwards, not each line, so a burst of output
# can carry a tag in the middle of a result row ("2048 512 float sum -1 [1,0]<stdout>: 35.88").
_MPIRUN_TAG_INSIDE = re.compile(r"\s?\[\d+,\d+\]<(?:stdout|stderr)>:\s?")
_RANK = re.compile(
    r"^#\s*Rank\s+(\d+)(?:\s+Group\s+(\d+))?\s+Pid\s+(\d+)\s+on\s+(\S+)\s+device\s+(\d+)"
    r"\s+\[((?:0x)?[0-9a-fA-F]+(?::[0-9a-fA-F]+)*)\]\s+(.*?)\s*$"
)
_PARAMS = re.compile(r"(nThread|nGpus|minBytes|maxBytes|warmup iters|agg iters|iters|validation|"
                     r"graph|step|unalign)\s*:?\s*(-?\d+)")
_NCCL_LOG = re.compile(r"\bNCCL (INFO|WARN|TRACE|ABORT)\b")
_NCCL_VERSION = re.compile(r"\bNCCL version (\S+)")
_FAILURE = re.compile(r"\bTest (?:NCCL |CUDA )?failure\b|\bTest failure\b|\bTest timeout \(\d+s\)")
# What nccl-tests prints to stderr when it cannot start: a wrong GPU count (on a node that
# lost a GPU: "8 requested but only 7 were found"), a library it was not built for.
_TOOL_FAILURE = re.compile(
    r"^Invalid number of GPUs: \d+ requested|^Please check the number of processes and GPUs|"
    r"^Incompatible NCCL versions\b|^Device implementation \d+ is not supported"
)
# nccl-tests (or getopt for it) refusing its command line, and the usage text that follows.
_USAGE_ERROR = re.compile(
    r"^invalid sizes? (?:specified )?for\b|^Option -\w\b.*\brequires\b|"
    r"^\S+: (?:invalid|unrecognized) option\b|^\S+: option '?-[-\w]*'? requires an argument"
)
_USAGE_TEXT = re.compile(r"^USAGE: |^\[-\w,--")
# A process that died of a signal, said by the shell, the C library, OpenMPI's or UCX's
# signal handler, mpirun ("exited on signal 11 (Segmentation fault)") or srun ("task 0:
# Segmentation fault"). SIGKILL is not here: it is how a deadline or the OOM killer ends a run.
_CRASH = re.compile(
    r"\bSegmentation fault\b|\bBus error\b|\bIllegal instruction\b|"
    r"\bFloating point exception\b|\bAborted \(core dumped\)|"
    r"\b(?:exited on|Caught) signal (?:4|6|7|8|11)\b|\*\*\* Process received signal \*\*\*|"
    r"\bSignal: (?:Aborted|Bus error|Illegal instruction|Floating point exception)"
)
# nccl-tests' type and reduction names, old and new: what a header-less row may hold.
_NCCL_TYPES = frozenset({"int8", "uint8", "int32", "uint32", "int64", "uint64", "half", "float",
                         "double", "bfloat16", "f8e4m3", "f8e5m2", "char", "int"})
_NCCL_OPS = frozenset({"sum", "prod", "max", "min", "avg", "mulsum", "premulsum", "none"})
_FLOAT = r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"


# OpenMPI's show_help boxes are framed by lines of exactly 74 dashes (perftest's are 87).
_OMPI_RULE = "-" * 74
_LAUNCHER_FAILURES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("mpirun", re.compile(
        r"^(?:mpirun|mpiexec|orterun|prterun)\b.*\b(?:unable to|noticed that|detected that|"
        r"has exited due to|could not|was not able)\b")),
    ("mpirun", re.compile(
        r"^(?:ORTE|PRTE|PMIx|PMIX)\b.*\b(?:unable to|lost communication|does not know|"
        r"unexpectedly failed)\b")),
    ("mpirun", re.compile(r"^An? (?:ORTE|PRTE) daemon has unexpectedly failed")),
    ("mpirun", re.compile(r"^There are not enough slots available in the system")),
    ("mpirun", re.compile(r"^Your job has requested more processes than")),
    ("mpirun", re.compile(r"^No executable was specified on the (?:mpirun|prterun) command")),
    ("mpirun", re.compile(r"^Primary job\s+terminated normally, but")),
    ("mpirun", re.compile(r"ORTE_ERROR_LOG|PMIX ERROR|^\*\*\* An error occurred in MPI_")),
    ("mpirun", re.compile(r"\b(?:mpirun|mpiexec|prterun): (?:command )?not found")),
    ("srun", re.compile(r"^srun: (?:error|fatal):")),
    ("srun", re.compile(r"^srun: (?:Job step aborted|Force Terminated)")),
    ("srun", re.compile(r"^slurmstepd(?:-[\w.-]+)?: error:")),
    ("srun", re.compile(r"\bsrun: (?:command )?not found")),
    # mpirun starts its daemons over ssh: a node that refuses it fails the launch
    ("ssh", re.compile(r"^ssh: (?:connect to host|Could not resolve hostname)\b")),
    ("ssh", re.compile(r"\bPermission denied \((?:publickey|password|gssapi)")),
    ("ssh", re.compile(r"^Host key verification failed\.")),
    ("ssh", re.compile(r"^kex_exchange_identification: ")),
)
# Said by the launcher or its transport, not a failure: OpenMPI's "[host:pid] …" notices,
# srun's informational lines, ssh's host-key warning.
_LAUNCHER_NOTICE = re.compile(
    r"^\[[\w.-]+:\d+\] |^srun: |^(?:mpirun|prterun): Forwarding signal|^Warning: Permanently added"
)


def launcher_failure(line: str) -> str | None:
    """The launcher ("mpirun", "srun", or "ssh", mpirun's remote shell) whose failure text
    `line` is, else None."""
    for launcher, pattern in _LAUNCHER_FAILURES:
        if pattern.search(line):
            return launcher
    return None


class _LauncherText:
    """Collects what mpirun/srun print into a tool's capture; see the module docstring."""

    def __init__(self) -> None:
        self.box: list[tuple[int, str]] | None = None
        self.errors: list[tuple[str, int, str]] = []  # (launcher, line, text)
        self.messages: list[str] = []

    def take(self, number: int, body: str) -> bool:
        """True when `body` (a stripped line) is the launcher's, now recorded."""
        if body == _OMPI_RULE:
            if self.box is None:
                self.box = []
            else:
                self._close()
            return True
        if self.box is not None:
            self.box.append((number, body))
            return True
        launcher = launcher_failure(body)
        if launcher:
            self.errors.append((launcher, number, body))
            return True
        if _LAUNCHER_NOTICE.search(body):
            self.messages.append(body)
            return True
        return False

    def _close(self) -> None:
        box, self.box = self.box or [], None
        text = " ".join(body for _, body in box)
        for number, body in box:
            launcher = launcher_failure(body)
            if launcher:
                self.errors.append((launcher, number, text))
                return
        if text:
            self.messages.append(text)

    def finish(self, result: dict[str, Any], report_explains: bool) -> None:
        """Record into `result`; raise LauncherError when the launcher's failure is all
        that explains a missing or cut-short report."""
        if self.box is not None:
            self._close()  # the capture ends inside a box
        result["launcher_messages"] = self.messages
        result["launcher_errors"] = [text for _, _, text in self.errors]
        if self.errors and not report_explains:
            launcher, number, text = self.errors[0]
            raise LauncherError(launcher, number, text[:400], result)


def strip_launcher_prefix(line: str) -> tuple[str, str | None]:
    """Remove an mpirun "[1,0]<stdout>:" or srun --label "0: " prefix; return (line, stream)."""
    stripped, stream, _ = _strip(line)
    return stripped, stream


def _strip(line: str) -> tuple[str, str | None, str | None]:
    """(line without its launcher prefix, mpirun's stream, "mpirun" | "srun" | None)."""
    match = _MPIRUN_PREFIX.match(line)
    if match:
        return _MPIRUN_TAG_INSIDE.sub(" ", line[match.end():]), match.group(1), "mpirun"
    match = _SRUN_PREFIX.match(line)
    if match:
        return line[match.end():], None, "srun"
    return line, None, None


def crash_lines(text: str) -> list[str]:
    """The lines of `text` saying a process died of a signal (see `crashes`)."""
    out = []
    for raw in text.splitlines():
        body = _strip(raw)[0].strip()
        if body and _CRASH.search(body):
            out.append(body)
    return out


def _num(token: str, number: int, what: str) -> float:
    try:
        return float(token)
    except ValueError:
        raise ParseError(f"line {number}: {what} is not a number: {token!r}") from None


def _half(tokens: list[str], names: list[str], number: int) -> dict[str, Any]:
    values = dict(zip(names, tokens, strict=True))
    out: dict[str, Any] = {
        "time_us": _num(values["time"], number, "time"),
        "algbw": _num(values["algbw"], number, "algbw"),
        "busbw": _num(values["busbw"], number, "busbw"),
        "wrong": None,
        "error": None,
    }
    if "#wrong" in values and values["#wrong"] != "N/A":
        out["wrong"] = int(_num(values["#wrong"], number, "#wrong"))
    if "error" in values and values["error"] != "N/A":
        out["error"] = _num(values["error"], number, "error")
    return out


def _new_result(fmt: str) -> dict[str, Any]:
    return {
        "format": fmt, "nccl_version": None, "tests_version": None, "collective": None,
        "json_output": None, "params": {}, "ranks": [], "layout": None, "columns": None,
        "excerpt": False, "rows": [], "avg_busbw": None, "avg_busbw_check": None,
        "out_of_bounds": None, "out_of_bounds_ok": None, "complete": False, "cut_line": None,
        "failures": [], "usage_errors": [], "crashes": [], "warnings": [], "last_error": None,
        "launcher_messages": [], "launcher_errors": [],
    }


def nccl_version_from_code(code: int) -> str:
    """NCCL's version code as a version: 22907 -> "2.29.7" (2.9 onwards: major*10000 +
    minor*100 + patch; before: major*1000 + minor*100 + patch)."""
    if code >= 20900:
        return f"{code // 10000}.{code // 100 % 100}.{code % 100}"
    return f"{code // 1000}.{code // 100 % 10}.{code % 100}"


def parse_nccl_tests(text: str) -> dict[str, Any]:
    """Parse nccl-tests output (all_reduce_perf & co.), or its -J JSON report. See the module
    docstring."""
    if text.lstrip().startswith("{"):
        return parse_nccl_tests_json(text)
    result = _new_result("text")
    columns: list[str] | None = None
    timestamps = False
    seen_start = False
    library_code: int | None = None
    launcher = _LauncherText()
    lines = text.splitlines()
    tagged = any(_MPIRUN_PREFIX.match(raw) for raw in lines)
    last_line = max((n for n, raw in enumerate(lines, start=1) if raw.strip()), default=0)
    for number, raw in enumerate(lines, start=1):
        line, stream, prefix = _strip(raw)
        body = line.strip()
        if not body:
            continue
        if _CRASH.search(body):
            result["crashes"].append(body)
            # the launcher's own words (a box, "srun: error:") are its too; a signal
            # handler's "[host:pid] Signal: …" is the crash alone
            if launcher.box is not None or launcher_failure(body):
                launcher.take(number, body)
            continue
        if launcher.take(number, body):
            continue
        if body.startswith("# error:"):
            result["last_error"] = body[len("# error:"):].strip() or None
            continue
        if _NCCL_LOG.search(body):
            if " NCCL WARN " in f" {body} ":
                result["warnings"].append(body)
            version = _NCCL_VERSION.search(body)
            if version and result["nccl_version"] is None:
                result["nccl_version"] = version.group(1)
            continue
        if _FAILURE.search(body) or _TOOL_FAILURE.search(body):
            result["failures"].append(body)
            continue
        if _USAGE_ERROR.search(body):
            result["usage_errors"].append(body)
            continue
        if result["usage_errors"] and _USAGE_TEXT.search(body):
            continue
        version = re.match(r"^#?\s*NCCL version (\S+)", body)
        if version:
            result["nccl_version"] = version.group(1)
            continue
        if body.startswith("#"):
            content = body[1:].strip()
            rank = _RANK.match(body)
            if rank:
                result["ranks"].append({
                    "rank": int(rank.group(1)),
                    "group": int(rank.group(2)) if rank.group(2) is not None else None,
                    "pid": int(rank.group(3)), "host": rank.group(4),
                    "device": int(rank.group(5)), "bus_id": rank.group(6),
                    "device_name": rank.group(7),
                })
            elif content.startswith("nThread"):
                seen_start = True
                for name, value in _PARAMS.findall(content):
                    result["params"][_key(name)] = int(value)
            elif content.split()[:2] == ["size", "count"]:
                columns = ["time" if c == "cputime" else c for c in content.split()]
                timestamps = columns[-1] == "timestamp"
                if timestamps:
                    columns = columns[:-1]
                result["layout"] = "wrong" if "#wrong" in columns else "error"
                result["columns"] = "header"
                if "time" not in columns or (len(columns) - columns.index("time")) % 2:
                    raise ParseError(f"line {number}: unexpected column header {content!r}")
            elif content.startswith("Avg bus bandwidth"):
                value, _, check = content.split(":", 1)[1].strip().partition(" ")
                result["avg_busbw"] = _num(value, number, "avg busbw")
                result["avg_busbw_check"] = check.strip() or None
                result["complete"] = True
            elif content.startswith("Out of bounds values"):
                oob = re.search(r":\s*(\d+)\s*(\S+)?", content)
                if oob:
                    result["out_of_bounds"] = int(oob.group(1))
                    result["out_of_bounds_ok"] = oob.group(2) == "OK"
            elif content.startswith("nccl-tests version"):
                words = content.split()
                result["tests_version"] = words[2] if len(words) > 2 else None
                library = re.search(r"nccl-library=(\d+)", content)
                library_code = int(library.group(1)) if library else None
            elif content.startswith("Collective test starting:"):
                result["collective"] = content.split(":", 1)[1].strip() or None
            elif content.startswith("Writing JSON output to "):
                result["json_output"] = content[len("Writing JSON output to "):].strip()
            continue  # other comments: "# Using devices", units line, "#"
        if re.match(r"^\d", body):
            tokens = body.split()
            if columns is None:
                inferred = _infer_columns(tokens)
                if inferred is None:
                    if number == last_line and result["rows"]:
                        result["cut_line"] = body
                        continue
                    raise ParseError(
                        f"line {number}: a result row without its column header, whose "
                        f"{len(tokens)} values are no layout nccl-tests prints: {body[:120]!r}")
                columns, result["layout"] = inferred
                result["columns"] = "inferred"
            stamp = None
            if timestamps and len(tokens) == len(columns) + 2:
                stamp, tokens = " ".join(tokens[-2:]), tokens[:-2]
            try:
                row = _row(tokens, columns, number)
            except ParseError:
                if number == last_line:
                    result["cut_line"] = body  # the capture ends inside this row
                    continue
                raise
            if stamp is not None:
                row["timestamp"] = stamp
            result["rows"].append(row)
            continue
        if stream == "stderr":
            continue  # a rank's stderr (ssh banners, MPI warnings) is not the table
        if tagged and prefix is None:
            # Under --tag-output every rank's line is tagged: an untagged one is mpirun's
            # own or its remote shell's (X11 "Authorization required", `set -x` traces).
            launcher.messages.append(body)
            continue
        raise ParseError(
            f"line {number}: not nccl-tests output: {body[:120]!r}"
            + ("" if seen_start or result["rows"] else
               " (no '# nThread …' header seen before it)")
        )
    if result["nccl_version"] is None and library_code is not None:
        result["nccl_version"] = nccl_version_from_code(library_code)
    result["excerpt"] = not seen_start
    explained = (result["complete"] or bool(result["failures"]) or bool(result["crashes"])
                 or bool(result["usage_errors"]))
    launcher.finish(result, explained)
    if not (seen_start or result["rows"] or explained):
        raise ParseError(
            "line 1: no '# nThread …' header, column header or result row; not nccl-tests "
            "output"
        )
    return result


def _infer_columns(tokens: list[str]) -> tuple[list[str], str] | None:
    """(columns, layout) of a result row printed without its header, when its shape says
    unambiguously which layout it is (see the module docstring), else None."""
    if len(tokens) < 11 or not (tokens[0].isdigit() and tokens[1].isdigit()):
        return None
    if tokens[2] not in _NCCL_TYPES:
        return None

    def is_int(token: str) -> bool:
        return re.fullmatch(r"-?\d+", token) is not None

    def is_value(token: str) -> bool:
        return token == "N/A" or re.fullmatch(_FLOAT, token) is not None

    n = len(tokens)
    if n == 13 and tokens[3] in _NCCL_OPS and is_int(tokens[4]):
        check = [tokens[8], tokens[12]]
        old = any(re.search(r"[.eE]", c) for c in check if c != "N/A")
        half = ["time", "algbw", "busbw", "error" if old else "#wrong"]
        lead = ["size", "count", "type", "redop", "root"]
    elif n == 21 and tokens[3] in _NCCL_OPS and is_int(tokens[4]):
        half = ["time", "algbw", "busbw", "#wrong", "i_min", "i_max", "i_p99", "i_cv%"]
        lead, old = ["size", "count", "type", "redop", "root"], False
    elif n == 12 and (tokens[3] in _NCCL_OPS or is_int(tokens[3])):
        half = ["time", "algbw", "busbw", "error"]
        lead, old = ["size", "count", "type", "redop" if tokens[3] in _NCCL_OPS else "root"], True
    elif n == 11:
        half = ["time", "algbw", "busbw", "error"]
        lead, old = ["size", "count", "type"], True
    else:
        return None
    if not all(is_value(t) for t in tokens[len(lead):]):
        return None
    return lead + half + half, "error" if old else "wrong"


def _key(name: str) -> str:
    return name.lower().replace(" ", "_")


def _row(tokens: list[str], columns: list[str], number: int) -> dict[str, Any]:
    # Columns: size count type [redop] [root] | time algbw busbw error|#wrong [i_*] (twice).
    lead = columns.index("time")
    per_half = (len(columns) - lead) // 2
    if len(tokens) != len(columns):
        raise ParseError(
            f"line {number}: {len(tokens)} values for {len(columns)} columns "
            f"({' '.join(columns)})"
        )
    head = dict(zip(columns[:lead], tokens[:lead], strict=True))
    try:
        size, count = int(head["size"]), int(head["count"])
    except ValueError:
        raise ParseError(f"line {number}: size/count are not integers") from None
    root = head.get("root")
    half_names = columns[lead:lead + per_half]
    return {
        "size": size,
        "count": count,
        "type": head.get("type"),
        "redop": head.get("redop"),
        "root": int(root) if root not in (None, "N/A") else None,
        "out_of_place": _half(tokens[lead:lead + per_half], half_names, number),
        "in_place": _half(tokens[lead + per_half:], half_names, number),
    }


def busbw_at(result: dict[str, Any], size: int) -> float | None:
    """Out-of-place bus bandwidth (GB/s) at `size` bytes, or None if that size did not run."""
    found = [row for row in result["rows"] if row["size"] == size]
    return found[-1]["out_of_place"]["busbw"] if found else None


# --- nccl-tests' JSON report (-J) ---------------------------------------------------------

# nccl-tests prints doubles with "%lf": an infinity comes out as a bare `inf`, not JSON.
_JSON_NONFINITE = re.compile(r"(?<=[:,\[])(\s*)-?(?:inf|nan)\b(?=\s*[,}\]])")
_JSON_PARAMS = {"nthreads": "nthread", "ngpus": "ngpus", "minimum_bytes": "minbytes",
                "maximum_bytes": "maxbytes", "step_factor": "step", "step_bytes": "step",
                "warmup_iters": "warmup_iters", "iterations": "iters",
                "aggregated_iterations": "agg_iters", "validation": "validation",
                "graph": "graph"}


def _json_cut_short(text: str) -> Any:
    """The document a JSON text cut off mid-way held so far: the text up to the last object
    or list it closed, with the ones still open closed. ParseError when nothing closed."""
    stack: list[str] = []
    in_string = escaped = False
    last_close, open_then = -1, []
    for i, char in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
            continue
        if char == '"':
            in_string = True
        elif char in "{[":
            stack.append("}" if char == "{" else "]")
        elif char in "}]":
            if not stack:
                break
            stack.pop()
            last_close, open_then = i, list(stack)
    if last_close < 0:
        raise ParseError("line 1: a JSON report cut off before its first record, or not JSON")
    try:
        return json.loads(text[:last_close + 1] + "".join(reversed(open_then)))
    except ValueError as exc:
        raise ParseError(f"line 1: not an nccl-tests JSON report: {exc}") from None


def _json_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value in ("true", "false"):
        return value == "true"
    return None


def _json_number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return None  # "nan", as nccl-tests writes a NaN


def _json_half(half: Any) -> dict[str, Any] | None:
    if not isinstance(half, dict):
        return None
    wrong = _json_number(half.get("nwrong"))
    time = half.get("time", half.get("cpu_time"))
    return {"time_us": _json_number(time), "algbw": _json_number(half.get("alg_bw")),
            "busbw": _json_number(half.get("bus_bw")),
            "wrong": int(wrong) if wrong is not None and wrong == wrong else None,
            "error": None}


def parse_nccl_tests_json(text: str) -> dict[str, Any]:
    """nccl-tests' -J report in parse_nccl_tests' shape. See the module docstring."""
    cleaned = _JSON_NONFINITE.sub(r"\1null", text)
    try:
        doc, closed = json.loads(cleaned), True
    except ValueError:
        doc, closed = _json_cut_short(cleaned), False
    if not isinstance(doc, dict) or not ({"results", "config", "nccl_version"} & set(doc)):
        raise ParseError("line 1: JSON, but not an nccl-tests report (no results, config or "
                         "nccl_version)")
    result = _new_result("json")
    result["json_version"] = doc.get("version")
    result["start_time"], result["end_time"] = doc.get("start_time"), doc.get("end_time")
    if isinstance(doc.get("args"), list) and doc["args"]:
        result["collective"] = str(doc["args"][0]).rsplit("/", 1)[-1]
    code = doc.get("nccl_version")
    if isinstance(code, int):
        result["nccl_version"] = nccl_version_from_code(code)
    config = doc.get("config") if isinstance(doc.get("config"), dict) else {}
    for key, name in _JSON_PARAMS.items():
        if isinstance(config.get(key), int) and not isinstance(config.get(key), bool):
            result["params"][name] = config[key]
    for device in config.get("devices") or []:
        if isinstance(device, dict):
            result["ranks"].append({
                "rank": device.get("rank"), "group": device.get("group"),
                "pid": device.get("pid"), "host": device.get("hostname"),
                "device": device.get("device"), "bus_id": device.get("device_hex"),
                "device_name": device.get("device_info")})
    for number, record in enumerate(doc.get("results") or [], start=1):
        if not isinstance(record, dict) or not isinstance(record.get("size"), int):
            raise ParseError(f"line 1: results[{number - 1}] is not a result record")
        root = str(record.get("root", "")).strip()
        in_place = _json_half(record.get("in_place"))
        out_of_place = _json_half(record.get("out_of_place"))
        if in_place is None and out_of_place is None:
            continue  # cut off before its measurements
        result["rows"].append({
            "size": record["size"], "count": record.get("count"), "type": record.get("type"),
            "redop": record.get("redop"),
            "root": int(root) if re.fullmatch(r"-?\d+", root) else None,
            "out_of_place": out_of_place or in_place, "in_place": in_place or out_of_place})
    if result["rows"]:
        result["layout"], result["columns"] = "wrong", "header"
    oob = doc.get("out_of_bounds")
    if isinstance(oob, dict):
        result["out_of_bounds"] = oob.get("count")
        result["out_of_bounds_ok"] = _json_bool(oob.get("okay"))
    # spelt "average_bus_bandwidith" / "bandwidith" before nccl-tests 2.17.9
    average = doc.get("average_bus_bandwidth", doc.get("average_bus_bandwidith"))
    if isinstance(average, dict):
        result["avg_busbw"] = _json_number(average.get("bandwidth", average.get("bandwidith")))
        okay = _json_bool(average.get("okay"))
        result["avg_busbw_check"] = None if okay is None else ("OK" if okay else "FAILED")
        result["complete"] = result["avg_busbw"] is not None
    errors = [str(e) for e in doc.get("errors") or [] if e]
    result["last_error"] = errors[0] if errors else None
    result["complete"] = result["complete"] and closed
    return result


# --- perftest ib_write_bw ---------------------------------------------------------------------

_BW_HEADER = re.compile(
    r"^#bytes\s+#iterations\s+BW peak\[(Gb/sec|MB/sec)\]\s+BW average\[(Gb/sec|MB/sec)\]"
    r"\s+MsgRate\[Mpps\]"
)
_BW_ROW = re.compile(rf"^(\d+)\s+(\d+)\s+({_FLOAT})\s+({_FLOAT})\s+({_FLOAT})\s*$")
_MIB_PER_S_TO_GBPS = 2**20 * 8 / 1e9
_BANNER_FIELD = re.compile(r"([A-Za-z][A-Za-z0-9 .*_-]*?)\s*:\s*(\S.*)")
# Fields share a banner line, split by tabs (perftest 4.x) or a run of spaces (newer).
_BANNER_SPLIT = re.compile(r"(?:\t|\s{2,})\s*(?=[A-Za-z][A-Za-z0-9 .*_-]*?\s*:)")
_ADDRESS = re.compile(r"^(local|remote) address:\s*(.*)$")
_PERFTEST_ERROR = re.compile(
    r"^(?:Couldn't|Could not|Unable to|Failed|Completion with error|Port number \d+ state is|"
    r"Error|ERROR|\w+ failed\b)"
)
# perftest's --use_cuda set-up: the buffer is GPU memory, so the run is GPUDirect RDMA.
_CUDA_BUFFER = re.compile(
    r"^initializing CUDA$|^allocated GPU buffer|^using DMA-BUF for GPU buffer")
_CUDA_PCIE = re.compile(r"^CUDA device \d+: PCIe address is (\S+)")


def perftest_errors(text: str) -> list[str]:
    """perftest's failure lines anywhere in `text` (see the module docstring)."""
    out = []
    for raw in text.splitlines():
        body = _strip(raw)[0].strip()
        if body and _PERFTEST_ERROR.match(body):
            out.append(body)
    return out


def _banner_fields(body: str) -> list[tuple[str, str]] | None:
    """[(snake_case name, value)] of a banner line, or None when it is not one."""
    parts = [part.strip() for part in _BANNER_SPLIT.split(body) if part.strip()]
    pairs = [_BANNER_FIELD.fullmatch(part) for part in parts]
    if not (pairs and all(pairs)):
        pairs = [_BANNER_FIELD.fullmatch(re.sub(r"\s+", " ", body))]  # "rdma_cm QPs\t : OFF"
    if not all(pairs):
        return None
    return [(re.sub(r"[^0-9a-z]+", "_", pair.group(1).lower()).strip("_"), pair.group(2).strip())
            for pair in pairs if pair]


def parse_ib_write_bw(text: str) -> dict[str, Any]:
    """Parse perftest's ib_write_bw (ib_read_bw, ib_send_bw) report. See the module docstring."""
    result: dict[str, Any] = {"test": None, "device": None, "link_type": None, "info": {},
                              "units": None, "rows": [], "bw_average_gbps": None,
                              "complete": False, "errors": [], "gpudirect": False,
                              "dmabuf": False, "gpu_pcie": None, "launcher_messages": [],
                              "launcher_errors": []}
    units: str | None = None
    in_banner = False
    last_address = "local"
    seen: set[tuple[Any, ...]] = set()
    first_unknown: tuple[int, str] | None = None
    lines = text.splitlines()
    last_line = max((n for n, raw in enumerate(lines, start=1) if raw.strip()), default=0)
    launcher = _LauncherText()
    for number, raw in enumerate(lines, start=1):
        line, _stream = strip_launcher_prefix(raw)
        body = line.strip()
        if not body or launcher.take(number, body):
            continue
        if set(body) == {"-"}:
            if result["rows"]:
                result["complete"] = True  # the rule under the table
            continue
        header = _BW_HEADER.match(body)
        if header:
            units = header.group(2)
            result["units"] = units
            in_banner = False
            continue
        row = _BW_ROW.match(body) if units is not None else None
        if row:
            factor = 1.0 if units == "Gb/sec" else _MIB_PER_S_TO_GBPS
            peak, avg = float(row.group(3)), float(row.group(4))
            key = row.groups()
            if key in seen:
                continue  # the other side's copy of a row already read
            seen.add(key)
            result["rows"].append({
                "bytes": int(row.group(1)), "iterations": int(row.group(2)),
                "bw_peak": peak, "bw_average": avg, "msg_rate_mpps": float(row.group(5)),
                "bw_peak_gbps": round(peak * factor, 4),
                "bw_average_gbps": round(avg * factor, 4),
            })
            result["complete"] = False
            continue
        if units is not None and body[0].isdigit():
            if number == last_line:
                continue  # the capture ends inside this row
            raise ParseError(f"line {number}: not an ib_write_bw result row: {body[:120]!r}")
        if re.fullmatch(r"[A-Za-z_]+ BW Test", body):
            result["test"] = body
            in_banner = True
            continue
        address = _ADDRESS.match(body)
        if address:
            last_address = address.group(1)
            result["info"][f"{last_address}_address"] = address.group(2)
            in_banner = False
            continue
        if body.startswith("GID:"):
            result["info"][f"{last_address}_gid"] = body[4:].strip()
            continue
        if _PERFTEST_ERROR.match(body):
            result["errors"].append(body)
            continue
        if _CUDA_BUFFER.match(body):
            result["gpudirect"] = True
            result["dmabuf"] = result["dmabuf"] or body.startswith("using DMA-BUF")
        pcie = _CUDA_PCIE.match(body)
        if pcie:
            result["gpu_pcie"] = pcie.group(1)
        fields = _banner_fields(body) if in_banner else None
        if fields:
            result["info"].update(fields)
            continue
        # Anything else is set-up chatter (CUDA/DMA-BUF lines, the server's "Waiting for
        # client to connect" box) or another program's output interleaved with perftest's.
        if first_unknown is None:
            first_unknown = (number, body)
    result["device"] = result["info"].get("device")
    result["link_type"] = result["info"].get("link_type")
    launcher.finish(result, result["complete"] or bool(result["errors"]))
    if not result["rows"] and result["test"] is None:
        where = first_unknown or (1, text.strip()[:60])
        raise ParseError(
            f"line {where[0]}: no ib_write_bw result table ('#bytes #iterations BW peak…' and "
            f"a row) found; first unrecognised line: {where[1][:120]!r}"
        )
    if result["rows"]:
        result["bw_average_gbps"] = result["rows"][-1]["bw_average_gbps"]
    return result

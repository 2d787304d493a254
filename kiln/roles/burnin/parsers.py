"""Parsers for burn-in tool output: nccl-tests (`all_reduce_perf` & co.) and perftest's
`ib_write_bw`.

Pure functions, text in, plain data out; input that is not what the tool prints raises
`ParseError` naming the line.

parse_nccl_tests(text) -> dict
  Accepts the tool's stdout as printed directly, through `mpirun` (lines prefixed
  "[1,0]<stdout>:") or `srun --label` ("0: "), with NCCL_DEBUG=INFO lines interleaved,
  and both column layouts: the old one with an `error` column and the new one with
  `redop root` and `#wrong`.
    nccl_version   str | None         "2.16.2+cuda11.6" (from "NCCL version …"/"# NCCL version")
    params         {name: int}        from the "# nThread 1 nGpus 8 minBytes …" line:
                                      nthread, ngpus, minbytes, maxbytes, warmup_iters, iters,
                                      agg_iters, validation, graph (those printed)
    ranks          [{rank, group (int|None), pid, host, device, bus_id ("0x18"), device_name}]
    layout         "wrong" (new, #wrong column) | "error" (old, error column)
    rows           [row] in the order printed
      row: {size: int bytes, count: int, type: str, redop: str, root: int | None,
            out_of_place: {time_us, algbw, busbw: float (GB/s), wrong: int|None,
                           error: float|None},
            in_place: {…same…}}
    avg_busbw      float | None       "# Avg bus bandwidth : N" (GB/s)
    out_of_bounds  int | None         "# Out of bounds values : N OK"
    out_of_bounds_ok bool | None
    complete       bool               the "# Avg bus bandwidth" line was seen
    failures       [str]              "Test NCCL failure …"/"Test CUDA failure …" lines
    warnings       [str]              "NCCL WARN …" lines
  busbw_at(result, size) -> float | None: out-of-place busbw at `size` bytes (last row).

parse_ib_write_bw(text) -> dict   (also ib_read_bw/ib_send_bw: same table)
    test           str | None         "RDMA_Write BW Test"
    device         str | None         "mlx5_0"
    link_type      str | None         "IB" | "Ethernet"
    info           {snake_case header field: str}  every "Name : value" in the banner
    units          "Gb/sec" | "MB/sec"  as the table header says (--report_gbits or not)
    rows           [{bytes: int, iterations: int, bw_peak, bw_average: float (in `units`),
                     msg_rate_mpps: float, bw_peak_gbps, bw_average_gbps: float (Gb/s)}]
    bw_average_gbps float | None      of the last row (the usual single-size run)
  MB/sec is perftest's MiB/s (2**20 bytes); Gb/sec is 10**9 bits: converted accordingly.
"""

from __future__ import annotations

import re
from typing import Any

from kiln.core.parsing import ParseError

_MPIRUN_PREFIX = re.compile(r"^\[\d+,\d+\]<(stdout|stderr)>:\s?")
_SRUN_PREFIX = re.compile(r"^\s*\d+:(?: |$)")
# OpenMPI 4's --tag-output tags each chunk it forwards, not each line, so a burst of output
# can carry a tag in the middle of a result row ("2048 512 float sum -1 [1,0]<stdout>: 35.88").
_MPIRUN_TAG_INSIDE = re.compile(r"\s?\[\d+,\d+\]<(?:stdout|stderr)>:\s?")
_RANK = re.compile(
    r"^#\s*Rank\s+(\d+)(?:\s+Group\s+(\d+))?\s+Pid\s+(\d+)\s+on\s+(\S+)\s+device\s+(\d+)"
    r"\s+\[(0x[0-9a-fA-F]+)\]\s+(.*?)\s*$"
)
_PARAMS = re.compile(r"(nThread|nGpus|minBytes|maxBytes|warmup iters|agg iters|iters|validation|"
                     r"graph|step)\s*:?\s*(-?\d+)")
_NCCL_LOG = re.compile(r"\bNCCL (INFO|WARN|TRACE|ABORT)\b")
_FAILURE = re.compile(r"\bTest (?:NCCL |CUDA )?failure\b|\bTest failure\b")
_FLOAT = r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"


def strip_launcher_prefix(line: str) -> tuple[str, str | None]:
    """Remove an mpirun "[1,0]<stdout>:" or srun --label "0: " prefix; return (line, stream)."""
    match = _MPIRUN_PREFIX.match(line)
    if match:
        return _MPIRUN_TAG_INSIDE.sub(" ", line[match.end():]), match.group(1)
    match = _SRUN_PREFIX.match(line)
    if match:
        return line[match.end():], None
    return line, None


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


def parse_nccl_tests(text: str) -> dict[str, Any]:
    """Parse nccl-tests output (all_reduce_perf & co.). See the module docstring."""
    result: dict[str, Any] = {
        "nccl_version": None, "params": {}, "ranks": [], "layout": None, "rows": [],
        "avg_busbw": None, "out_of_bounds": None, "out_of_bounds_ok": None,
        "complete": False, "failures": [], "warnings": [],
    }
    columns: list[str] | None = None
    seen_start = False
    for number, raw in enumerate(text.splitlines(), start=1):
        line, stream = strip_launcher_prefix(raw)
        body = line.strip()
        if not body:
            continue
        if _NCCL_LOG.search(body):
            if " NCCL WARN " in f" {body} ":
                result["warnings"].append(body)
            continue
        if _FAILURE.search(body):
            result["failures"].append(body)
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
                columns = content.split()
                result["layout"] = "wrong" if "#wrong" in columns else "error"
                if "time" not in columns or (len(columns) - columns.index("time")) % 2:
                    raise ParseError(f"line {number}: unexpected column header {content!r}")
            elif content.startswith("Avg bus bandwidth"):
                result["avg_busbw"] = _num(content.split(":", 1)[1].strip(), number, "avg busbw")
                result["complete"] = True
            elif content.startswith("Out of bounds values"):
                oob = re.search(r":\s*(\d+)\s*(\S+)?", content)
                if oob:
                    result["out_of_bounds"] = int(oob.group(1))
                    result["out_of_bounds_ok"] = oob.group(2) == "OK"
            continue  # other comments: "# Using devices", units line, "#"
        if columns is not None and re.match(r"^\d", body):
            result["rows"].append(_row(body.split(), columns, number))
            continue
        if stream == "stderr":
            continue  # a rank's stderr (ssh banners, MPI warnings) is not the table
        raise ParseError(
            f"line {number}: not nccl-tests output: {body[:120]!r}"
            + ("" if seen_start else " (no '# nThread …' header seen before it)")
        )
    if not seen_start or columns is None:
        raise ParseError(
            "line 1: no '# nThread …' header and column header; not nccl-tests output"
        )
    return result


def _key(name: str) -> str:
    return name.lower().replace(" ", "_")


def _row(tokens: list[str], columns: list[str], number: int) -> dict[str, Any]:
    # Columns: size count type redop [root] | time algbw busbw error|#wrong (twice).
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


# --- perftest ib_write_bw ---------------------------------------------------------------------

_BW_HEADER = re.compile(
    r"^#bytes\s+#iterations\s+BW peak\[(Gb/sec|MB/sec)\]\s+BW average\[(Gb/sec|MB/sec)\]"
    r"\s+MsgRate\[Mpps\]"
)
_BW_ROW = re.compile(rf"^(\d+)\s+(\d+)\s+({_FLOAT})\s+({_FLOAT})\s+({_FLOAT})\s*$")
_MIB_PER_S_TO_GBPS = 2**20 * 8 / 1e9
_BANNER_FIELD = re.compile(r"([A-Za-z][A-Za-z0-9 .*_-]*?)\s*:\s*(\S.*)")


def parse_ib_write_bw(text: str) -> dict[str, Any]:
    """Parse perftest's ib_write_bw (ib_read_bw, ib_send_bw) report. See the module docstring."""
    result: dict[str, Any] = {"test": None, "device": None, "link_type": None, "info": {},
                              "units": None, "rows": [], "bw_average_gbps": None}
    units: str | None = None
    first_unknown: tuple[int, str] | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line, _stream = strip_launcher_prefix(raw)
        body = line.strip()
        if not body or set(body) == {"-"}:
            continue
        header = _BW_HEADER.match(body)
        if header:
            units = header.group(2)
            result["units"] = units
            continue
        if units is not None:
            row = _BW_ROW.match(body)
            if row:
                factor = 1.0 if units == "Gb/sec" else _MIB_PER_S_TO_GBPS
                peak, avg = float(row.group(3)), float(row.group(4))
                result["rows"].append({
                    "bytes": int(row.group(1)), "iterations": int(row.group(2)),
                    "bw_peak": peak, "bw_average": avg, "msg_rate_mpps": float(row.group(5)),
                    "bw_peak_gbps": round(peak * factor, 4),
                    "bw_average_gbps": round(avg * factor, 4),
                })
                continue
            raise ParseError(f"line {number}: not an ib_write_bw result row: {body[:120]!r}")
        if re.fullmatch(r"[A-Za-z_]+ BW Test", body):
            result["test"] = body
            continue
        # Banner: "Dual-port : OFF\t\tDevice : mlx5_0" holds two fields on one line.
        pairs = [_BANNER_FIELD.fullmatch(part.strip()) for part in body.split("\t") if part.strip()]
        if not (pairs and all(pairs)):
            pairs = [_BANNER_FIELD.fullmatch(re.sub(r"\s+", " ", body))]  # "rdma_cm QPs\t : OFF"
        if all(pairs):
            for pair in pairs:
                name = re.sub(r"[^0-9a-z]+", "_", pair.group(1).lower()).strip("_")
                result["info"][name] = pair.group(2).strip()
            continue
        if first_unknown is None:
            first_unknown = (number, body)
    result["device"] = result["info"].get("device")
    result["link_type"] = result["info"].get("link_type")
    if not result["rows"]:
        where = first_unknown or (1, text.strip()[:60])
        raise ParseError(
            f"line {where[0]}: no ib_write_bw result table ('#bytes #iterations BW peak…' and "
            f"a row) found; first unrecognised line: {where[1][:120]!r}"
        )
    result["bw_average_gbps"] = result["rows"][-1]["bw_average_gbps"]
    return result

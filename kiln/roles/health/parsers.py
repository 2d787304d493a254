"""Parsers for health-check output: `dcgmi diag` (text table and `-j` JSON) and the kernel
log (`dmesg`, /dev/kmsg, `journalctl -k`) for NVIDIA Xid and NVSwitch SXid events.

Pure functions, text in, plain data out; input that is not what the tool prints raises
`ParseError` naming the line.

parse_dcgmi_diag(text) -> dict        (text table or JSON, told apart by the first "{")
    format         "text" | "json"
    version        str | None         DCGM version ("DCGM Version" / "version")
    driver_version str | None
    metadata       {snake_case key: str}   the Metadata rows / other top-level JSON strings
    tests          [test] in the order printed
      test: {category: "Deployment"|"Integration"|"Hardware"|"Stress"|…, name: str,
             status: worst of its results ("Fail" > "Warn" > "Unknown" > "Pass" > "Skip"),
             results: [{status: "Pass"|"Fail"|"Warn"|"Skip"|other as printed,
                        gpus: [int], all_gpus: bool}],
             warnings: [str], info: [str]}
    overall        "Pass" | "Fail" | "Warn" | "Unknown" | "Error" (DCGM could not run:
                   JSON runtime_error, no tests)
    failed_tests   [str]   names of tests with a Fail result
    failed_gpus    [int]   GPUs named in a Fail result (all_gpus Fail results add none)
    runtime_error  str | None

parse_kernel_log(text) -> dict
  Lines in any of: `dmesg` ("[  12.345678] …"), `dmesg -T` ("[Sun Feb 23 16:24:18 2025] …"),
  `dmesg --time-format iso` ("2025-02-23T16:24:18,123456+00:00 …"), /dev/kmsg records
  ("6,3973,227996636,-;…" plus " KEY=value" continuation lines) and `journalctl -k`
  ("Feb 23 16:24:18 host kernel: …"), each also with `dmesg --decode`'s "facility:level : "
  in front ("kern  :warn  : 2025-01-21T02:21:33,498559+00:00 …"). Lines without a timestamp
  are an error.
    lines   int     kernel log records read
    xids    [{xid: int, pci: "0000:9b:00", pid: int | None, process: str | None,
              message: str (the text after pid/name), timestamp: str (as printed),
              line: int}]
    sxids   [{sxid: int, device: "nvidia-nvswitch2", pci: "0000:86:00.0",
              severity: "Fatal" | "Non-fatal" | None, message: str, timestamp: str, line: int}]
"""

from __future__ import annotations

import json
import re
from typing import Any

from kiln.core.parsing import ParseError

# --- dcgmi diag ------------------------------------------------------------------------------

_STATUS = {"pass": "Pass", "passed": "Pass", "fail": "Fail", "failed": "Fail", "warn": "Warn",
           "warning": "Warn", "skip": "Skip", "skipped": "Skip"}
_RANK = {"Fail": 4, "Warn": 3, "Unknown": 2, "Pass": 1, "Skip": 0}
_CATEGORY = re.compile(r"^[+|]-+\s+(\S.*?)\s+-+[+|].*[+|]$")
_RESULT = re.compile(
    r"^(Pass|Fail|Warn|Skip|Skipped|Not Run)\b(?:\s*-\s*(All|GPUs?:\s*([\d,\s]*)))?\s*$", re.I
)


def _snake(label: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", label.strip().lower()).strip("_")


def _status(raw: str) -> str:
    return _STATUS.get(raw.strip().lower(), raw.strip())


def _worst(statuses: list[str]) -> str:
    if not statuses:
        return "Unknown"
    return max(statuses, key=lambda s: _RANK.get(s, _RANK["Unknown"]))


def _gpu_list(raw: str) -> list[int]:
    return [int(part) for part in re.split(r"[,\s]+", raw.strip()) if part.isdigit()]


def _finish(result: dict[str, Any]) -> dict[str, Any]:
    failed_gpus: set[int] = set()
    statuses = []
    for test in result["tests"]:
        test["status"] = _worst([r["status"] for r in test["results"]])
        statuses.append(test["status"])
        for res in test["results"]:
            if res["status"] == "Fail":
                failed_gpus.update(res["gpus"])
    overall = _worst(statuses)
    if overall == "Skip":
        overall = "Unknown"  # nothing ran: that is not a pass
    if overall not in _RANK:
        overall = "Unknown"
    if not result["tests"] and result.get("runtime_error"):
        overall = "Error"
    result["overall"] = overall
    result["failed_tests"] = [t["name"] for t in result["tests"] if t["status"] == "Fail"]
    result["failed_gpus"] = sorted(failed_gpus)
    return result


def parse_dcgmi_diag(text: str) -> dict[str, Any]:
    """Parse `dcgmi diag -r N` (text) or `dcgmi diag -r N -j` (JSON). See module docstring."""
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if line.strip().startswith("{"):
            return _parse_dcgmi_json("\n".join(lines[index:]), index)
        if line.strip().startswith(("+", "|")):
            break
    return _parse_dcgmi_text(lines)


def _parse_dcgmi_text(lines: list[str]) -> dict[str, Any]:
    result: dict[str, Any] = {"format": "text", "version": None, "driver_version": None,
                              "metadata": {}, "tests": [], "runtime_error": None}
    category: str | None = None
    seen_table = False
    target: tuple[list[str], int] | None = None  # (list, index) a wrapped cell continues
    last_filled = False
    for number, raw in enumerate(lines, start=1):
        line = raw.rstrip()
        body = line.strip()
        if not body:
            continue
        category_match = _CATEGORY.match(body)
        if category_match:
            category = category_match.group(1)
            target = None
            continue
        if re.fullmatch(r"\+[-=+]+\+", body):
            seen_table = True
            continue
        if not body.startswith("|"):
            if body.startswith("Successfully ran diagnostic"):
                continue
            if body.startswith("Error"):
                raise ParseError(f"line {number}: dcgmi reported an error: {body}")
            raise ParseError(f"line {number}: not a dcgmi diag table line: {body[:100]!r}")
        cells = body.split("|")
        if len(cells) != 4 or cells[0] or cells[3]:
            raise ParseError(f"line {number}: expected '| NAME | RESULT |', got {body[:100]!r}")
        name, value_raw = cells[1].strip(), cells[2]
        value = value_raw.strip()
        # A cell is "| text |": one space either side. Text that reaches the right edge was
        # cut there by dcgmi's wrapping, possibly mid-word.
        filled = len(value) >= len(value_raw) - 2
        if category is None:
            if (name, value) == ("Diagnostic", "Result"):
                continue
            raise ParseError(f"line {number}: table row before any section header: {body!r}")
        if category == "Metadata":
            if name:
                result["metadata"][_snake(name)] = value
            continue
        if name in ("Warning", "Info"):
            if not result["tests"]:
                raise ParseError(f"line {number}: {name} before any test row")
            bucket = result["tests"][-1]["warnings" if name == "Warning" else "info"]
            bucket.append(value)
            target, last_filled = (bucket, len(bucket) - 1), filled
            continue
        if name:
            parsed = _RESULT.match(value)
            if not parsed:
                raise ParseError(f"line {number}: cannot read result {value!r} of {name!r}")
            result["tests"].append({"category": category, "name": name,
                                    "results": [_text_result(parsed)], "warnings": [],
                                    "info": []})
            target = None
            continue
        parsed = _RESULT.match(value)
        if parsed and target is None and result["tests"]:
            result["tests"][-1]["results"].append(_text_result(parsed))
            continue
        if target is not None:
            bucket, at = target
            # dcgmi wraps long text at the column edge, mid-word; a chunk that stops short
            # of the edge ended at a space.
            bucket[at] += ("" if last_filled else " ") + value
            last_filled = filled
            continue
        raise ParseError(f"line {number}: continuation row with nothing to continue: {body!r}")
    if not seen_table or (not result["tests"] and not result["metadata"]):
        raise ParseError("line 1: no dcgmi diag result table found")
    result["version"] = result["metadata"].get("dcgm_version")
    result["driver_version"] = result["metadata"].get("driver_version_detected")
    return _finish(result)


def _text_result(match: re.Match[str]) -> dict[str, Any]:
    scope = match.group(2)
    gpus = _gpu_list(match.group(3) or "")
    return {"status": _status(match.group(1)), "gpus": gpus,
            "all_gpus": scope is None or scope.lower() == "all"}


def _texts(value: Any) -> list[str]:
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    texts = []
    for item in items:
        if isinstance(item, dict):
            texts.append(str(item.get("warning", item.get("info", item.get("message", item)))))
        else:
            texts.append(str(item))
    return texts


def _parse_dcgmi_json(text: str, offset: int) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ParseError(f"line {exc.lineno + offset}: invalid JSON: {exc.msg}") from None
    if not isinstance(data, dict) or not isinstance(data.get("DCGM GPU Diagnostic"), dict):
        top = ", ".join(sorted(data)) if isinstance(data, dict) else type(data).__name__
        raise ParseError(
            f"line {offset + 1}: no 'DCGM GPU Diagnostic' object (found: {top}); "
            "only DCGM 2.x/3.x JSON is understood"
        )
    root = data["DCGM GPU Diagnostic"]
    result: dict[str, Any] = {
        "format": "json", "version": root.get("version"),
        "driver_version": root.get("Driver Version Detected"),
        "metadata": {_snake(k): v for k, v in root.items() if isinstance(v, str)},
        "tests": [], "runtime_error": root.get("runtime_error"),
    }
    categories = root.get("test_categories")
    if categories is None and not result["runtime_error"]:
        raise ParseError(f"line {offset + 1}: neither test_categories nor runtime_error")
    for category in categories or []:
        if not isinstance(category, dict):
            continue
        for test in category.get("tests") or []:
            if not isinstance(test, dict):
                continue  # real output holds `null` entries between tests
            entry = {"category": category.get("category"), "name": test.get("name"),
                     "results": [], "warnings": [], "info": []}
            for res in test.get("results") or []:
                if not isinstance(res, dict):
                    continue
                ids = res.get("gpu_ids", res.get("gpu_id"))
                gpus = ids if isinstance(ids, list) else _gpu_list(str(ids or ""))
                entry["results"].append({"status": _status(str(res.get("status", ""))),
                                         "gpus": [int(g) for g in gpus],
                                         "all_gpus": ids is None})
                entry["warnings"].extend(_texts(res.get("warnings")))
                entry["info"].extend(_texts(res.get("info")))
            result["tests"].append(entry)
    return _finish(result)


# --- kernel log ------------------------------------------------------------------------------

_TIMESTAMPS = (
    ("raw", re.compile(r"^\[\s*(\d+\.\d+)\]\s?(.*)$")),
    ("ctime",
     re.compile(r"^\[([A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \d{4})\]\s?(.*)$")),
    ("iso", re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[,.]\d+[+-]\d\d:?\d\d)(?:\s(.*))?$")),
    ("kmsg", re.compile(r"^(\d+,\d+,\d+,[^;]*);(.*)$")),
    ("journal", re.compile(r"^([A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d) \S+ kernel: (.*)$")),
)
_XID = re.compile(r"NVRM: Xid \((?:PCI:)?([0-9A-Fa-f:.]+)\): (\d+),\s*(.*)$")
_SXID = re.compile(r"(nvidia-nvswitch\d+): SXid \((?:PCI:)?([0-9A-Fa-f:.]+)\): (\d+),\s*(.*)$")
_PID = re.compile(r"^pid=('?<unknown>'?|\d+),\s*(?:name=([^,]*),\s*)?(.*)$")


def _kmsg_time(prefix: str) -> str:
    # /dev/kmsg: "PRIO,SEQ,USEC,FLAGS"; print the monotonic time the way dmesg does.
    usec = int(prefix.split(",")[2])
    return f"{usec / 1e6:.6f}"


# `dmesg --decode` (-x) puts "facility:level : " before the timestamp: "kern  :warn  : ".
_DECODED = re.compile(r"^[a-z]+\s*:[a-z]+\s*: ?")


def _timestamped(raw: str) -> tuple[str, str] | None:
    """(timestamp as dmesg prints it, message) of a kernel log line, or None."""
    decoded = _DECODED.match(raw)
    if decoded:
        raw = raw[decoded.end():]
    for kind, pattern in _TIMESTAMPS:
        match = pattern.match(raw)
        if match:
            stamp = _kmsg_time(match.group(1)) if kind == "kmsg" else match.group(1)
            return stamp, match.group(2) or ""
    return None


def parse_kernel_log(text: str) -> dict[str, Any]:
    """Read Xid/SXid events from a kernel log. See the module docstring for the keys."""
    result: dict[str, Any] = {"lines": 0, "xids": [], "sxids": []}
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        if raw.startswith(" ") and result["lines"] and "=" in raw:
            continue  # /dev/kmsg continuation: " SUBSYSTEM=pci"
        stamped = _timestamped(raw)
        if stamped is None:
            raise ParseError(
                f"line {number}: not a kernel log line (expected a dmesg, dmesg -T, "
                f"--time-format iso, /dev/kmsg or journalctl -k timestamp): {raw[:100]!r}"
            )
        stamp, message = stamped
        result["lines"] += 1
        xid = _XID.search(message)
        if xid:
            rest = xid.group(3)
            pid_match = _PID.match(rest)
            pid: int | None = None
            process: str | None = None
            if pid_match:
                pid = int(pid_match.group(1)) if pid_match.group(1).isdigit() else None
                name = (pid_match.group(2) or "").strip()
                process = name if name and name != "<unknown>" else None
                rest = pid_match.group(3)
            result["xids"].append({"xid": int(xid.group(2)), "pci": xid.group(1), "pid": pid,
                                   "process": process, "message": rest.strip(),
                                   "timestamp": stamp, "line": number})
            continue
        sxid = _SXID.search(message)
        if sxid:
            detail = sxid.group(4).strip()
            severity = None
            head = detail.split(",", 1)[0].strip()
            if head in ("Fatal", "Non-fatal"):
                severity = head
                detail = detail.split(",", 1)[1].strip() if "," in detail else ""
            result["sxids"].append({"sxid": int(sxid.group(3)), "device": sxid.group(1),
                                    "pci": sxid.group(2), "severity": severity,
                                    "message": detail, "timestamp": stamp, "line": number})
    if result["lines"] == 0:
        raise ParseError("line 1: empty kernel log")
    return result

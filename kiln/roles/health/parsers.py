"""Parsers for health-check output: `dcgmi diag` (text table and `-j` JSON) and the kernel
log (`dmesg`, /dev/kmsg, `journalctl -k`) for NVIDIA Xid and NVSwitch SXid events.

Pure functions, text in, plain data out; input that is not what the tool prints raises
`ParseError` naming the line.

parse_dcgmi_diag(text) -> dict        (text table or JSON, told apart by the first "{")
  Reads DCGM 2.x/3.x ("DCGM GPU Diagnostic", results by gpu_ids, tests named "PCIe",
  "GPU Memory", …) and DCGM 4.x ("DCGM Diagnostic" beside "entity_groups" and "metadata",
  results by entity, tests named "software", "memory", "pcie", …), table or JSON.
    format         "text" | "json"
    shape          "dcgm3" | "dcgm4"
    version        str | None         DCGM version ("DCGM Version" / metadata "version")
    driver_version str | None
    metadata       {snake_case key: str}   the Metadata rows / other top-level JSON strings
    entities       [{group: "GPU"|"Switch"|"CPU"|…, group_id: int | None, id: int,
                     serial: str | None, device_id: str | None}]   (DCGM 4 entity_groups)
    tests          [test] in the order printed
      test: {category: "Deployment"|"Integration"|"Hardware"|"Stress"|…, name: str,
             status: worst of its results and summary
                     ("Fail" > "Warn" > "Unknown" > "Pass" > "Skip"),
             results: [result], warnings: [str], info: [str],
             summary: {status, warnings: [warning], info: [str]} | None   (DCGM 4's
                      test_summary, or the test's own row in its table: what DCGM says
                      about the test as a whole, errors about no one entity included),
             warning_details: [warning + {entity, gpu}]   every warning of the test}
      result: {status: "Pass"|"Fail"|"Warn"|"Skip"|other as printed, gpus: [int],
               all_gpus: bool, entity: {group, group_id, id} | None,
               gpu: int | None (the GPU index when the result is about one GPU),
               warnings: [warning], info: [str]}
      warning: {message: str, error_id: int | None, category: int | None,
                category_name: str | None, severity: int | None, severity_name: str | None}
               (DCGM's dcgmErrorSeverity_t: NONE 0, MONITOR 1, ISOLATE 2, UNKNOWN 3,
               TRIAGE 4, CONFIG 5, RESET 6; a number it does not define is kept, named
               "UNRECOGNISED(n)"; a plain-string warning has None for the numbers)
      DCGM 3 reads keep the keys they always had: a test has summary and warning_details,
      a result warnings and info, only where they hold something, and a result has no
      entity or gpu (its gpus say which GPUs); DCGM 4 reads have every key.
    overall        "Pass" | "Fail" | "Warn" | "Unknown" | "Error" (DCGM could not run:
                   JSON runtime_error, no tests)
    failed_tests   [str]   names of tests with a Fail result
    failed_gpus    [int]   GPUs named in a Fail result (all_gpus Fail results add none)
    failed_entities [{group, group_id, id}]   non-GPU entities (CPU, Switch) with a Fail
    runtime_error  str | None
  DCGM 4 prints a result that DCGM rates a warning as "Fail" (only the table's test row says
  "Warn"): the severity, not the status, says how bad it is.

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
# DCGM 4's table: "GPU0: Pass" under a test's own row, "Warning: GPU0" naming the entity a
# warning is about (dcgmi/Diag.cpp, HelperDisplayEntityResults); the entity group names are
# DcgmFieldsGetEntityGroupString's.
_ENTITY_ROW = re.compile(r"^([A-Za-z][A-Za-z_]*?)(\d+):\s*(Pass|Fail|Warn|Skip)?\s*$")
_ENTITY_LABEL = re.compile(r"^(Warning|Info):\s*([A-Za-z][A-Za-z_]*?)(\d+)$")
# DCGM 4 cuts a warning into chunks of exactly this many characters (DATA_INFO_TAG_LEN)
_DCGM4_CHUNK = 45

# dcgmErrorSeverity_t and dcgmErrorCategory_t (dcgmlib/dcgm_errors.h, DCGM 4.2.3)
DCGM_SEVERITY = {0: "NONE", 1: "MONITOR", 2: "ISOLATE", 3: "UNKNOWN", 4: "TRIAGE", 5: "CONFIG",
                 6: "RESET"}
DCGM_CATEGORY = {0: "NONE", 1: "PERF_THRESHOLD", 2: "PERF_VIOLATION", 3: "SOFTWARE_CONFIG",
                 4: "SOFTWARE_LIBRARY", 5: "SOFTWARE_XID", 6: "SOFTWARE_CUDA", 7: "SOFTWARE_EUD",
                 8: "SOFTWARE_OTHER", 9: "HARDWARE_THERMAL", 10: "HARDWARE_MEMORY",
                 11: "HARDWARE_NVLINK", 12: "HARDWARE_NVSWITCH", 13: "HARDWARE_PCIE",
                 14: "HARDWARE_POWER", 15: "HARDWARE_OTHER", 16: "INTERNAL_OTHER"}
# dcgm_field_entity_group_t -> DcgmFieldsGetEntityGroupString
DCGM_ENTITY_GROUP = {0: "None", 1: "GPU", 2: "vGPU", 3: "Switch", 4: "GPU_I", 5: "GPU_CI",
                     6: "LINK", 7: "CPU", 8: "CPU_CORE"}


def severity_name(severity: int | None) -> str | None:
    """DCGM's name for an error severity; a number DCGM 4.2.3 does not define is named as
    such (never dropped: a newer DCGM may add one)."""
    if severity is None:
        return None
    return DCGM_SEVERITY.get(severity, f"UNRECOGNISED({severity})")


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


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    return None


def _warning(item: Any) -> dict[str, Any]:
    """One warning as {message, error_id, category, category_name, severity, severity_name}:
    DCGM 3/4 JSON give objects ({"warning", "error_id", "error_category", "error_severity"}),
    the text table and old JSON plain strings (their numbers are then None)."""
    if not isinstance(item, dict):
        return {"message": str(item), "error_id": None, "category": None, "category_name": None,
                "severity": None, "severity_name": None}
    message = item.get("warning", item.get("message", item.get("info")))
    category = _int(item.get("error_category"))
    severity = _int(item.get("error_severity"))
    return {"message": str(message) if message is not None else json.dumps(item, sort_keys=True),
            "error_id": _int(item.get("error_id")),
            "category": category,
            "category_name": None if category is None else DCGM_CATEGORY.get(
                category, f"UNRECOGNISED({category})"),
            "severity": severity, "severity_name": severity_name(severity)}


def _texts(value: Any) -> list[str]:
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    return [str(item.get("info", item.get("message", item))) if isinstance(item, dict)
            else str(item) for item in items]


def _entity(group: str | None, group_id: int | None, entity_id: int | None) -> dict[str, Any]:
    if group is None and group_id is not None:
        group = DCGM_ENTITY_GROUP.get(group_id)
    if group_id is None and group is not None:
        group_id = next((k for k, v in DCGM_ENTITY_GROUP.items() if v == group), None)
    return {"group": group, "group_id": group_id, "id": entity_id}


def _result(status: str, *, gpus: list[int] | None = None, all_gpus: bool = False,
            entity: dict[str, Any] | None = None, warnings: list[dict[str, Any]] | None = None,
            info: list[str] | None = None) -> dict[str, Any]:
    if entity is not None and entity["group"] == "GPU" and entity["id"] is not None:
        gpus = [entity["id"]]
    gpu = entity["id"] if entity is not None and entity["group"] == "GPU" else (
        gpus[0] if entity is None and gpus and len(gpus) == 1 else None)
    if entity is None and gpus and len(gpus) == 1:
        entity = _entity("GPU", 1, gpus[0])
    return {"status": status, "gpus": list(gpus or []), "all_gpus": all_gpus, "entity": entity,
            "gpu": gpu, "warnings": list(warnings or []), "info": list(info or [])}


def _new_test(category: str | None, name: str | None) -> dict[str, Any]:
    return {"category": category, "name": name, "status": "Unknown", "results": [],
            "warnings": [], "info": [], "warning_details": [], "summary": None}


def _finish(result: dict[str, Any]) -> dict[str, Any]:
    failed_gpus: set[int] = set()
    failed_entities: list[dict[str, Any]] = []
    statuses = []
    for test in result["tests"]:
        own = [r["status"] for r in test["results"]]
        if test["summary"] is not None:
            own.append(test["summary"]["status"])
        test["status"] = _worst(own)
        statuses.append(test["status"])
        for res in test["results"]:
            if res["status"] != "Fail":
                continue
            entity = res["entity"]
            if entity is not None and entity["group"] not in ("GPU", None):
                if entity not in failed_entities:
                    failed_entities.append(entity)
            else:
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
    result["failed_entities"] = failed_entities
    _compact(result)
    return result


def _compact(result: dict[str, Any]) -> None:
    """DCGM 3's tests and results keep the keys they always had: a test gains summary and
    warning_details, a result warnings and info, only where they hold something; entity and
    gpu are DCGM 4's (a DCGM 3 result names its GPUs in gpus)."""
    dcgm4 = result["shape"] == "dcgm4"
    for test in result["tests"]:
        if test["summary"] is None:
            del test["summary"]
        if not test["warning_details"]:
            del test["warning_details"]
        for res in test["results"]:
            if dcgm4:
                continue
            del res["entity"], res["gpu"]
            for key in ("warnings", "info"):
                if not res[key]:
                    del res[key]


def parse_dcgmi_diag(text: str) -> dict[str, Any]:
    """Parse `dcgmi diag -r N` (text) or `dcgmi diag -r N -j` (JSON), DCGM 2.x/3.x or 4.x.
    See the module docstring."""
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if line.strip().startswith("{"):
            return _parse_dcgmi_json("\n".join(lines[index:]), index)
        if line.strip().startswith(("+", "|")):
            break
    return _parse_dcgmi_text(lines)


def _major(version: str | None) -> int | None:
    match = re.match(r"\s*(\d+)", version or "")
    return int(match.group(1)) if match else None


class _Open:
    """A warning or info cell the rows below continue: where its text goes (the test's list
    and, when the row names its entity, that result's own list) and whether its last chunk
    reached the column's edge."""

    def __init__(self, places: list[tuple[Any, Any]], filled: bool):
        self.places, self.filled = places, filled

    def extend(self, chunk: str, dcgm4: bool, filled: bool) -> None:
        # DCGM 4 cuts at exactly 45 characters, mid-word and keeping spaces; DCGM 3 at the
        # column's edge, a chunk that stops short of the edge having ended at a space.
        joiner = "" if dcgm4 or self.filled else " "
        for holder, key in self.places:
            holder[key] += joiner + chunk
        self.filled = filled


def _parse_dcgmi_text(lines: list[str]) -> dict[str, Any]:
    result: dict[str, Any] = {"format": "text", "shape": "dcgm3", "version": None,
                              "driver_version": None, "metadata": {}, "entities": [],
                              "tests": [], "runtime_error": None}
    category: str | None = None
    seen_table = False
    target: _Open | None = None
    dcgm4 = False
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
        chunk = value_raw[1:1 + _DCGM4_CHUNK] if dcgm4 else value
        if category is None:
            if (name, value) == ("Diagnostic", "Result"):
                continue
            raise ParseError(f"line {number}: table row before any section header: {body!r}")
        if category == "Metadata":
            if name:
                result["metadata"][_snake(name)] = value
                dcgm4 = (_major(result["metadata"].get("dcgm_version")) or 0) >= 4
            continue
        tests = result["tests"]
        label = _ENTITY_LABEL.match(name)
        if name in ("Warning", "Info") or label:
            if not tests:
                raise ParseError(f"line {number}: {name} before any test row")
            test = tests[-1]
            kind = label.group(1) if label else name
            entity = _entity(label.group(2), None, int(label.group(3))) if label else None
            owner = _owner(test, entity, number)
            mine = "warnings" if kind == "Warning" else "info"
            test[mine].append(chunk)
            places: list[tuple[Any, Any]] = [(test[mine], len(test[mine]) - 1)]
            if owner is not None and kind == "Warning":
                owner["warnings"].append(_warning(chunk))
                places.append((owner["warnings"][-1], "message"))
            elif owner is not None:
                owner["info"].append(chunk)
                places.append((owner["info"], len(owner["info"]) - 1))
            target = _Open(places, filled)
            continue
        if name:
            parsed = _RESULT.match(value)
            test = _new_test(category, name)
            if dcgm4 and (parsed or not value):
                # DCGM 4: the test's own row; its entities' rows follow
                test["summary"] = {"status": _status(value) if value else "Unknown",
                                   "warnings": [], "info": []}
            elif parsed:
                test["results"].append(_text_result(parsed))
            else:
                raise ParseError(f"line {number}: cannot read result {value!r} of {name!r}")
            tests.append(test)
            target = None
            continue
        entity_row = _ENTITY_ROW.match(value)
        if entity_row and tests:
            test = tests[-1]
            if test["summary"] is None and len(test["results"]) == 1 \
                    and test["results"][0]["all_gpus"]:
                # a DCGM 4 table without its Metadata: the test's own row was its summary
                test["summary"] = {"status": test["results"].pop()["status"], "warnings": [],
                                   "info": []}
            entity = _entity(entity_row.group(1), None, int(entity_row.group(2)))
            status = _status(entity_row.group(3)) if entity_row.group(3) else "Unknown"
            test["results"].append(_result(status, entity=entity))
            target = None
            continue
        parsed = _RESULT.match(value)
        if parsed and target is None and tests:
            tests[-1]["results"].append(_text_result(parsed))
            continue
        if target is not None:
            target.extend(chunk, dcgm4, filled)
            continue
        raise ParseError(f"line {number}: continuation row with nothing to continue: {body!r}")
    if not seen_table or (not result["tests"] and not result["metadata"]):
        raise ParseError("line 1: no dcgmi diag result table found")
    if dcgm4:
        result["shape"] = "dcgm4"
        for test in result["tests"]:
            # the last chunk of a DCGM 4 cell keeps the column's padding
            test["warnings"] = [w.rstrip() for w in test["warnings"]]
            test["info"] = [i.rstrip() for i in test["info"]]
            for holder in [h for h in (test["summary"], *test["results"]) if h is not None]:
                for detail in holder["warnings"]:
                    detail["message"] = detail["message"].rstrip()
                holder["info"] = [i.rstrip() for i in holder["info"]]
    for test in result["tests"]:
        test["warning_details"] = _details(test)
    result["version"] = result["metadata"].get("dcgm_version")
    result["driver_version"] = result["metadata"].get("driver_version_detected")
    return _finish(result)


def _owner(test: dict[str, Any], entity: dict[str, Any] | None,
           number: int) -> dict[str, Any] | None:
    """What a Warning/Info row belongs to: the entity's result ("Warning: GPU3"), the test's
    summary (DCGM 4's plain "Warning"), or nothing to attach to (DCGM 3's table)."""
    if entity is None:
        return test["summary"]
    for res in reversed(test["results"]):
        if res["entity"] == entity:
            return res
    raise ParseError(f"line {number}: a row about {entity['group']}{entity['id']} before "
                     "that entity's result row")


def _details(test: dict[str, Any]) -> list[dict[str, Any]]:
    """Every warning of a test with the entity it is about (None: the test as a whole)."""
    details = []
    for res in test["results"]:
        details += [dict(w, entity=res["entity"], gpu=res["gpu"]) for w in res["warnings"]]
    if test["summary"] is not None:
        details += [dict(w, entity=None, gpu=None) for w in test["summary"]["warnings"]]
    attributed = {d["message"] for d in details}
    details += [dict(_warning(w), entity=None, gpu=None) for w in test["warnings"]
                if w not in attributed]
    return details


def _text_result(match: re.Match[str]) -> dict[str, Any]:
    scope = match.group(2)
    return _result(_status(match.group(1)), gpus=_gpu_list(match.group(3) or ""),
                   all_gpus=scope is None or scope.lower() == "all")


def _parse_dcgmi_json(text: str, offset: int) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ParseError(f"line {exc.lineno + offset}: invalid JSON: {exc.msg}") from None
    if isinstance(data, dict) and isinstance(data.get("DCGM Diagnostic"), dict):
        return _parse_dcgm4_json(data, offset)
    if not isinstance(data, dict) or not isinstance(data.get("DCGM GPU Diagnostic"), dict):
        top = ", ".join(sorted(data)) if isinstance(data, dict) else type(data).__name__
        raise ParseError(
            f"line {offset + 1}: neither 'DCGM GPU Diagnostic' (DCGM 2.x/3.x) nor "
            f"'DCGM Diagnostic' (DCGM 4.x) at the top (found: {top})"
        )
    root = data["DCGM GPU Diagnostic"]
    result: dict[str, Any] = {
        "format": "json", "shape": "dcgm3", "version": root.get("version"),
        "driver_version": root.get("Driver Version Detected"),
        "metadata": {_snake(k): v for k, v in root.items() if isinstance(v, str)},
        "entities": [{"group": "GPU", "group_id": 1, "id": n, "serial": None,
                      "device_id": device}
                     for n, device in enumerate(root.get("GPU Device IDs") or [])],
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
            entry = _new_test(category.get("category"), test.get("name"))
            for res in test.get("results") or []:
                if not isinstance(res, dict):
                    continue
                ids = res.get("gpu_ids", res.get("gpu_id"))
                gpus = ids if isinstance(ids, list) else _gpu_list(str(ids if ids is not None
                                                                        else ""))
                warnings = [_warning(w) for w in _listed(res.get("warnings"))]
                info = _texts(res.get("info"))
                entry["results"].append(_result(_status(str(res.get("status", ""))),
                                                gpus=[int(g) for g in gpus],
                                                all_gpus=ids is None, warnings=warnings,
                                                info=info))
                entry["warnings"].extend(w["message"] for w in warnings)
                entry["info"].extend(info)
            entry["warning_details"] = _details(entry)
            result["tests"].append(entry)
    return _finish(result)


def _listed(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _parse_dcgm4_json(data: dict[str, Any], offset: int) -> dict[str, Any]:
    """DCGM 4's `dcgmi diag -j` (dcgmi/Diag.cpp HelperJsonBuildOutput; NVIDIA's schema is
    testing/python3/dcgm_diag_schema.json): "DCGM Diagnostic" holds test_categories (or
    runtime_error and version when the run failed), "entity_groups" and "metadata" sit
    beside it."""
    root = data["DCGM Diagnostic"]
    metadata = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}
    strings = {**{k: v for k, v in root.items() if isinstance(v, str)},
               **{k: v for k, v in metadata.items() if isinstance(v, str)}}
    result: dict[str, Any] = {
        "format": "json", "shape": "dcgm4",
        "version": metadata.get("version") or root.get("version"),
        "driver_version": metadata.get("Driver Version Detected"),
        "metadata": {_snake(k): v for k, v in strings.items() if k != "runtime_error"},
        "entities": [], "tests": [], "runtime_error": root.get("runtime_error"),
    }
    for group in _listed(data.get("entity_groups")):
        if not isinstance(group, dict):
            continue
        for item in _listed(group.get("entities")):
            if isinstance(item, dict):
                entity = _entity(group.get("entity_group"), _int(group.get("entity_group_id")),
                                 _int(item.get("entity_id")))
                result["entities"].append({**entity, "serial": item.get("serial_num"),
                                           "device_id": item.get("device_id")})
    categories = root.get("test_categories")
    if categories is None and not result["runtime_error"]:
        raise ParseError(f"line {offset + 1}: 'DCGM Diagnostic' holds neither test_categories "
                         "nor runtime_error")
    for category in _listed(categories):
        if not isinstance(category, dict):
            continue
        for test in _listed(category.get("tests")):
            if not isinstance(test, dict):
                continue
            entry = _new_test(category.get("category"), test.get("name"))
            for res in _listed(test.get("results")):
                if not isinstance(res, dict):
                    continue
                entity = _entity(res.get("entity_group"), _int(res.get("entity_group_id")),
                                 _int(res.get("entity_id")))
                if entity == {"group": None, "group_id": None, "id": None}:
                    entity = None  # a result that names no entity: about the test as a whole
                warnings = [_warning(w) for w in _listed(res.get("warnings"))]
                info = _texts(res.get("info"))
                entry["results"].append(_result(_status(str(res.get("status", ""))),
                                                entity=entity, warnings=warnings, info=info))
                entry["warnings"].extend(w["message"] for w in warnings)
                entry["info"].extend(info)
            summary = test.get("test_summary")
            if isinstance(summary, dict):
                warnings = [_warning(w) for w in _listed(summary.get("warnings"))]
                info = _texts(summary.get("info"))
                entry["summary"] = {"status": _status(str(summary.get("status", ""))),
                                    "warnings": warnings, "info": info}
                entry["warnings"].extend(w["message"] for w in warnings)
                entry["info"].extend(info)
            entry["warning_details"] = _details(entry)
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
        if stamped is None and raw[:1].isspace() and result["lines"]:
            continue  # an indented further line of the record above (a multi-line record)
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


def kernel_log_records(text: str) -> list[tuple[str, str]]:
    """Every record of a kernel log as (timestamp as printed, message), in order: what the
    boot-log check judges line by line. The same formats as `parse_kernel_log`; kmsg
    continuation lines are skipped, a line without a timestamp is an error."""
    records: list[tuple[str, str]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        if raw.startswith(" ") and records and "=" in raw:
            continue
        stamped = _timestamped(raw)
        if stamped is None and raw[:1].isspace() and records:
            # dmesg prints the further lines of a multi-line record indented, without a
            # timestamp of their own: they belong to the record above.
            records.append((records[-1][0], raw.strip()))
            continue
        if stamped is None:
            raise ParseError(f"line {number}: not a kernel log line: {raw[:100]!r}")
        records.append(stamped)
    return records

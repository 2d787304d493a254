"""Parsers for what `nvidia-smi` prints: `-q`, `--query-gpu … --format=csv`, `nvlink -s/-e`.

All parsers are pure: text in, plain JSON-serialisable data out. Input that is not what the
tool prints raises `ParseError` naming the line. "N/A" (and nvidia-smi's "[N/A]",
"[Not Supported]", …) becomes None.

parse_nvidia_smi_q(text) -> dict
    driver_version   str | None    "535.161.08"
    cuda_version     str | None    "12.2"
    timestamp        str | None    as printed
    attached_gpus    int           0 when nvidia-smi printed "No devices were found"
    warnings         [str]         top-level "WARNING: …" lines (infoROM corrupted, …)
    gpus             [gpu]         in the order printed, one per "GPU 00000000:19:00.0" block
  gpu:
    pci_bus_id       "00000000:19:00.0" (the block header)
    product_name, product_brand, product_architecture, serial, uuid, vbios_version,
    board_part_number, gpu_part_number, gsp_firmware_version, persistence_mode,
    performance_state, compute_mode                              str | None
    minor_number, module_id                                      int | None
    inforom          {image, oem, ecc, power}                    str | None each
    mig_mode         {current, pending}                          str | None
    reset_required   bool | None ("GPU Reset Status/Reset Required")
    ecc              {mode_current, mode_pending: str | None,
                      volatile, aggregate: {snake_case counter: int | bool | None},
                      volatile_uncorrectable, aggregate_uncorrectable: int | None
                      (sum of the counters named *uncorrectable*; None when all are N/A)}
    remapped_rows    {correctable, uncorrectable: int | None, pending, failure: bool | None}
    retired_pages    {single_bit_ecc, double_bit_ecc: int | None, pending: bool | None}
    clocks, applications_clocks, default_applications_clocks, max_clocks
                     {graphics, sm, memory, video: int MHz | None} (keys present as printed)
    clocks_event_reasons {snake_case reason: bool (Active) | None}; read from
                     "Clocks Event Reasons" or the older "Clocks Throttle Reasons"
    active_clocks_event_reasons [snake_case reason]  the ones that are Active
    temperature      {snake_case name: int degrees C | None}, e.g. gpu_current_temp
    power            {draw_w, limit_w, default_limit_w, min_limit_w, max_limit_w: float | None}
    memory           {total_mib, reserved_mib, used_mib, free_mib: int | None}
    pcie             {gen_max, gen_current, gen_device_max, gen_device_current, gen_host_max,
                      width_max, width_current: int | None}, replays: int | None
    fabric           {state, status: str | None}
    processes        [{pid: int, type, name: str | None, used_memory_mib: int | None}]
    raw              every section as printed: {key: value-string or nested dict};
                     a section with repeated keys (Processes) becomes a list of dicts

parse_nvidia_smi_csv(text, fields=None) -> [ {field: value} ]
    One dict per GPU row. Keys are the query fields without units ("memory.total"); with
    `fields` given they are the caller's names and a header line, if present, is skipped.
    Values: int/float when numeric (units such as "MiB" stripped), None for N/A, str
    otherwise. Identity fields (serial, uuid, pci.bus_id, versions …) always stay str.

parse_nvlink(text) -> [gpu]  (`nvidia-smi nvlink -s`, `nvlink -e`, or both concatenated)
    gpu:  {index: int, name: str, uuid: str, links: [link]}
    link: {link: int, active: bool | None, speed_gb_s: float | None,
           errors: {snake_case counter: int | float | str}}
    active/speed come from `-s` (None when only `-e` was parsed); errors from `-e`.
"""

from __future__ import annotations

import re
from typing import Any

from kiln.core.parsing import ParseError

_NA = {"N/A", "[N/A]", "[Not Supported]", "Not Supported", "[Unknown Error]", "Unknown Error",
       "[Insufficient Permissions]", "Insufficient Permissions", "[GPU requires reset]",
       "[GPU is lost]"}


def _snake(label: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", label.strip().lower()).strip("_")


def _na(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return None if value in _NA else value


def _int(value: str | None) -> int | None:
    value = _na(value)
    if value is None:
        return None
    match = re.match(r"^(-?\d+)(?:\s*[A-Za-z%()]+)?$", value)
    return int(match.group(1)) if match else None


def _float(value: str | None) -> float | None:
    value = _na(value)
    if value is None:
        return None
    match = re.match(r"^(-?\d+(?:\.\d+)?)(?:\s*[A-Za-z%]+)?$", value)
    return float(match.group(1)) if match else None


def _bool(value: str | None) -> bool | None:
    value = _na(value)
    if value is None:
        return None
    lowered = value.lower()
    if lowered in ("yes", "active", "enabled", "true"):
        return True
    if lowered in ("no", "not active", "disabled", "false"):
        return False
    return None


# --- nvidia-smi -q ---------------------------------------------------------------------------

_KV = re.compile(r"^( *)(\S.*?)\s+:(?: (.*))?$")
_HEADER = re.compile(r"^( *)(\S.*?)\s*$")


class _Node:
    __slots__ = ("key", "value", "children", "line", "indent")

    def __init__(self, key: str, value: str | None, line: int, indent: int):
        self.key = key
        self.value = value
        self.children: list[_Node] = []
        self.line = line
        self.indent = indent


def _tree(text: str) -> tuple[list[_Node], list[str]]:
    """Indentation tree of `-q` output; top-level "WARNING:" lines are returned aside."""
    root = _Node("", None, 0, -1)
    stack = [root]
    warnings: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip()
        if not line.strip() or re.fullmatch(r"=+\s*NVSMI LOG\s*=+", line.strip()):
            continue
        if "\t" in line[: len(line) - len(line.lstrip())]:
            raise ParseError(
                f"line {number}: tab in indentation; nvidia-smi -q indents with spaces"
            )
        if line.startswith("WARNING:"):
            warnings.append(line[len("WARNING:"):].strip())
            continue
        match = _KV.match(line)
        if match:
            indent, key, value = len(match.group(1)), match.group(2), (match.group(3) or "").strip()
        else:
            header = _HEADER.match(line)
            assert header is not None  # any non-blank line matches
            indent, key, value = len(header.group(1)), header.group(2), None
        while stack[-1].indent >= indent:
            stack.pop()
        node = _Node(key, value, number, indent)
        stack[-1].children.append(node)
        stack.append(node)
    _check_headers(root)
    return root.children, warnings


def _check_headers(node: _Node) -> None:
    for child in node.children:
        if child.value is None and not child.children:
            raise ParseError(
                f"line {child.line}: {child.key!r} is neither 'Name : value' nor a section "
                "header with indented lines under it"
            )
        _check_headers(child)


def _raw(nodes: list[_Node]) -> dict[str, Any] | list[dict[str, Any]]:
    """Nested dict of a section; a section whose keys repeat is a list of entries."""
    keys = [n.key for n in nodes]
    if len(keys) != len(set(keys)):
        entries: list[dict[str, Any]] = []
        current: dict[str, Any] = {}
        for node in nodes:
            if node.key in current:
                entries.append(current)
                current = {}
            current[node.key] = _raw_value(node)
        entries.append(current)
        return entries
    return {n.key: _raw_value(n) for n in nodes}


def _raw_value(node: _Node) -> Any:
    if not node.children:
        return node.value
    nested = _raw(node.children)
    if node.value and isinstance(nested, dict):
        return {"value": node.value, **nested}
    return nested


def _section(raw: dict[str, Any], *names: str) -> dict[str, Any]:
    for name in names:
        value = raw.get(name)
        if isinstance(value, dict):
            return value
    return {}


def _flatten_reasons(section: dict[str, Any]) -> dict[str, bool | None]:
    reasons: dict[str, bool | None] = {}
    for key, value in section.items():
        if isinstance(value, dict):
            # "HW Slowdown : Active" has the thermal/power-brake reasons nested under it.
            reasons[_snake(key)] = _bool(value.get("value"))
            reasons.update(_flatten_reasons({k: v for k, v in value.items() if k != "value"}))
        else:
            reasons[_snake(key)] = _bool(value)
    return reasons


def _counters(section: dict[str, Any]) -> dict[str, int | bool | None]:
    out: dict[str, int | bool | None] = {}
    for key, value in section.items():
        if isinstance(value, dict):
            continue
        number = _int(value)
        out[_snake(key)] = number if number is not None else _bool(value)
    return out


def _uncorrectable_total(counters: dict[str, int | bool | None]) -> int | None:
    values = [v for k, v in counters.items()
              if "uncorrectable" in k and isinstance(v, int) and not isinstance(v, bool)]
    return sum(values) if values else None


def _clocks(section: dict[str, Any]) -> dict[str, int | None]:
    return {_snake(k): _int(v) for k, v in section.items() if not isinstance(v, dict)}


def _processes(value: Any) -> list[dict[str, Any]]:
    if not value or isinstance(value, str):
        return []  # "Processes : None"
    entries = value if isinstance(value, list) else [value]
    processes = []
    for entry in entries:
        pid_field = entry.get("Process ID")
        details = pid_field if isinstance(pid_field, dict) else {}
        pid = details.get("value") if details else pid_field
        processes.append({
            "pid": _int(pid),
            "type": _na(details.get("Type")),
            "name": _na(details.get("Name")),
            "used_memory_mib": _int(details.get("Used GPU Memory")),
        })
    return processes


def _gpu(bus_id: str, raw: dict[str, Any]) -> dict[str, Any]:
    inforom = _section(raw, "Inforom Version")
    pci = _section(raw, "PCI")
    link = _section(pci, "GPU Link Info")
    gen = _section(link, "PCIe Generation")
    width = _section(link, "Link Width")
    ecc_errors = _section(raw, "ECC Errors")
    volatile = _counters(_section(ecc_errors, "Volatile"))
    aggregate = _counters(_section(ecc_errors, "Aggregate"))
    remap = _section(raw, "Remapped Rows")
    retired = _section(raw, "Retired Pages")
    power = _section(raw, "GPU Power Readings", "Power Readings")
    fb = _section(raw, "FB Memory Usage")
    reasons = _flatten_reasons(_section(raw, "Clocks Event Reasons", "Clocks Throttle Reasons"))
    return {
        "pci_bus_id": bus_id,
        "product_name": _na(raw.get("Product Name")),
        "product_brand": _na(raw.get("Product Brand")),
        "product_architecture": _na(raw.get("Product Architecture")),
        "serial": _na(raw.get("Serial Number")),
        "uuid": _na(raw.get("GPU UUID")),
        "minor_number": _int(raw.get("Minor Number")),
        "module_id": _int(raw.get("Module ID")),
        "vbios_version": _na(raw.get("VBIOS Version")),
        "board_part_number": _na(raw.get("Board Part Number")),
        "gpu_part_number": _na(raw.get("GPU Part Number")),
        "gsp_firmware_version": _na(raw.get("GSP Firmware Version")),
        "persistence_mode": _na(raw.get("Persistence Mode")),
        "performance_state": _na(raw.get("Performance State")),
        "compute_mode": _na(raw.get("Compute Mode")),
        "inforom": {
            "image": _na(inforom.get("Image Version")),
            "oem": _na(inforom.get("OEM Object")),
            "ecc": _na(inforom.get("ECC Object")),
            "power": _na(inforom.get("Power Management Object")),
        },
        "mig_mode": {
            "current": _na(_section(raw, "MIG Mode").get("Current")),
            "pending": _na(_section(raw, "MIG Mode").get("Pending")),
        },
        "reset_required": _bool(_section(raw, "GPU Reset Status").get("Reset Required")),
        "ecc": {
            "mode_current": _na(_section(raw, "ECC Mode").get("Current")),
            "mode_pending": _na(_section(raw, "ECC Mode").get("Pending")),
            "volatile": volatile,
            "aggregate": aggregate,
            "volatile_uncorrectable": _uncorrectable_total(volatile),
            "aggregate_uncorrectable": _uncorrectable_total(aggregate),
        },
        "remapped_rows": {
            "correctable": _int(remap.get("Correctable Error")),
            "uncorrectable": _int(remap.get("Uncorrectable Error")),
            "pending": _bool(remap.get("Pending")),
            "failure": _bool(remap.get("Remapping Failure Occurred")),
        },
        "retired_pages": {
            "single_bit_ecc": _int(_leaf(retired.get("Single Bit ECC"))),
            "double_bit_ecc": _int(_leaf(retired.get("Double Bit ECC"))),
            "pending": _bool(retired.get("Pending Page Blacklist", retired.get("Pending"))),
        },
        "clocks": _clocks(_section(raw, "Clocks")),
        "applications_clocks": _clocks(_section(raw, "Applications Clocks")),
        "default_applications_clocks": _clocks(_section(raw, "Default Applications Clocks")),
        "max_clocks": _clocks(_section(raw, "Max Clocks")),
        "clocks_event_reasons": reasons,
        "active_clocks_event_reasons": sorted(k for k, v in reasons.items() if v),
        "temperature": {_snake(k): _int(v) for k, v in _section(raw, "Temperature").items()
                        if not isinstance(v, dict)},
        "power": {
            "draw_w": _float(power.get("Power Draw")),
            "limit_w": _float(power.get("Current Power Limit", power.get("Power Limit"))),
            "default_limit_w": _float(power.get("Default Power Limit")),
            "min_limit_w": _float(power.get("Min Power Limit")),
            "max_limit_w": _float(power.get("Max Power Limit")),
        },
        "memory": {
            "total_mib": _int(fb.get("Total")),
            "reserved_mib": _int(fb.get("Reserved")),
            "used_mib": _int(fb.get("Used")),
            "free_mib": _int(fb.get("Free")),
        },
        "pcie": {
            "gen_max": _int(gen.get("Max")),
            "gen_current": _int(gen.get("Current")),
            "gen_device_max": _int(gen.get("Device Max")),
            "gen_device_current": _int(gen.get("Device Current")),
            "gen_host_max": _int(gen.get("Host Max")),
            "width_max": _int((_na(width.get("Max")) or "").rstrip("x") or None),
            "width_current": _int((_na(width.get("Current")) or "").rstrip("x") or None),
            "replays": _int(pci.get("Replays Since Reset")),
        },
        "fabric": {
            "state": _na(_section(raw, "Fabric").get("State")),
            "status": _na(_section(raw, "Fabric").get("Status")),
        },
        "processes": _processes(raw.get("Processes")),
        "raw": raw,
    }


def _leaf(value: Any) -> Any:
    # Older drivers nest a count under "Single Bit ECC"; newer print the count inline.
    return value.get("value") if isinstance(value, dict) else value


_BUS_ID = re.compile(r"[0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-9A-Fa-f]")


def parse_nvidia_smi_q(text: str) -> dict[str, Any]:
    """Parse `nvidia-smi -q` (full text format). See the module docstring for the keys."""
    stripped = [line.strip() for line in text.splitlines() if line.strip()]
    if stripped and stripped[0].startswith("No devices were found"):
        return {"driver_version": None, "cuda_version": None, "timestamp": None,
                "attached_gpus": 0, "warnings": [], "gpus": []}
    if not stripped:
        raise ParseError("line 1: empty input; nvidia-smi -q prints at least the driver version")
    if stripped[0].startswith(("<?xml", "<!DOCTYPE nvidia_smi_log", "<nvidia_smi_log")):
        raise ParseError("line 1: this is `nvidia-smi -q -x` XML; this parser reads the text "
                         "of `nvidia-smi -q`")
    nodes, warnings = _tree(text)
    top = {n.key: n for n in nodes if not n.key.startswith("GPU ")}
    if "Driver Version" not in top:
        first = nodes[0].line if nodes else 1
        raise ParseError(
            f"line {first}: no 'Driver Version' line at the top level; not nvidia-smi -q output"
        )
    gpus = []
    for node in nodes:
        if node.key.startswith("GPU ") and node.children:
            bus_id = node.key[4:].strip()
            if not _BUS_ID.fullmatch(bus_id):
                raise ParseError(
                    f"line {node.line}: GPU block header {node.key!r} has no PCI bus id"
                )
            raw = _raw(node.children)
            if not isinstance(raw, dict):
                raise ParseError(f"line {node.line}: GPU block {bus_id} repeats a top-level key")
            gpus.append(_gpu(bus_id, raw))
    attached = _int(top["Attached GPUs"].value) if "Attached GPUs" in top else len(gpus)
    if attached != len(gpus):
        raise ParseError(
            f"line {top['Attached GPUs'].line}: 'Attached GPUs : {attached}' but {len(gpus)} GPU "
            "blocks follow (output cut short?)"
        )
    return {
        "driver_version": _na(top["Driver Version"].value),
        "cuda_version": _na(top["CUDA Version"].value) if "CUDA Version" in top else None,
        "timestamp": top["Timestamp"].value if "Timestamp" in top else None,
        "attached_gpus": len(gpus),
        "warnings": warnings,
        "gpus": gpus,
    }


# --- nvidia-smi --query-gpu=… --format=csv ----------------------------------------------------

# Fields whose values look numeric but are identities; never turn them into numbers.
_STRING_FIELDS = re.compile(
    r"^(serial|gpu_serial|uuid|gpu_uuid|name|gpu_name|driver_version|vbios_version|"
    r"pci\..*|gpu_bus_id|inforom\..*|board_part_number|gpu_part_number|.*\.id)$"
)
_HEADER_CELL = re.compile(r"^[a-z_][a-z0-9_.]*(?: \[[^\]]+\])?$")
_NUMBER_WITH_UNIT = re.compile(r"^(-?\d+(?:\.\d+)?)(?: ?(?:[A-Za-z%/]+))?$")


def _csv_value(field: str, cell: str) -> Any:
    cell = cell.strip()
    if _na(cell) is None:
        return None
    if _STRING_FIELDS.match(field):
        return cell
    match = _NUMBER_WITH_UNIT.match(cell)
    if match:
        number = match.group(1)
        return float(number) if "." in number else int(number)
    return cell


def _split_csv(line: str) -> list[str]:
    return [cell.strip() for cell in line.split(",")]


def parse_nvidia_smi_csv(text: str, fields: list[str] | None = None) -> list[dict[str, Any]]:
    """Parse `nvidia-smi --query-gpu=… --format=csv[,noheader][,nounits]` output."""
    lines = [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if lines and lines[0][1].strip().startswith("No devices were found"):
        return []
    if not lines:
        if fields:
            return []
        raise ParseError("line 1: empty input; without `fields` the CSV header line is needed")
    first_cells = _split_csv(lines[0][1])
    looks_like_header = all(_HEADER_CELL.match(cell) for cell in first_cells)
    if fields is None:
        if not looks_like_header:
            raise ParseError(
                f"line {lines[0][0]}: expected a header like 'index, name, memory.total [MiB]' "
                "(or pass the query fields for noheader output)"
            )
        names = [re.sub(r" \[[^\]]+\]$", "", cell) for cell in first_cells]
        body = lines[1:]
    else:
        names = list(fields)
        body = lines[1:] if looks_like_header and len(first_cells) == len(names) else lines
    rows = []
    for number, line in body:
        cells = _split_csv(line)
        if len(cells) != len(names):
            raise ParseError(
                f"line {number}: {len(cells)} values for {len(names)} fields ({', '.join(names)})"
            )
        rows.append({name: _csv_value(name, cell) for name, cell in zip(names, cells, strict=True)})
    return rows


# --- nvidia-smi nvlink -s / -e -----------------------------------------------------------------

_NVLINK_GPU = re.compile(r"^GPU (\d+): (.*?) \(UUID: (\S+)\)\s*$")
_NVLINK_LINK = re.compile(r"^\s+Link (\d+):\s*(.*?)\s*$")
_COUNTER = re.compile(r"^(.+?):\s*(\S.*)$")


def _nvlink_value(value: str) -> int | float | str:
    if re.fullmatch(r"-?\d+", value):
        return int(value)
    if re.fullmatch(r"-?\d+\.\d*(?:[eE][-+]?\d+)?|-?\d+[eE][-+]?\d+", value):
        return float(value)
    return value


def parse_nvlink(text: str) -> list[dict[str, Any]]:
    """Parse `nvidia-smi nvlink -s` and/or `nvidia-smi nvlink -e`. See the module docstring."""
    gpus: list[dict[str, Any]] = []
    links: dict[int, dict[str, Any]] = {}
    open_link: dict[str, Any] | None = None  # a "Link N:" whose counters follow indented
    open_indent = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        gpu_match = _NVLINK_GPU.match(raw)
        if gpu_match:
            links = {}
            gpus.append({"index": int(gpu_match.group(1)), "name": gpu_match.group(2),
                         "uuid": gpu_match.group(3), "links": []})
            open_link = None
            continue
        if not gpus:
            raise ParseError(
                f"line {number}: expected 'GPU N: NAME (UUID: …)', got {raw.strip()!r}"
            )
        indent = len(raw) - len(raw.lstrip())
        if open_link is not None and indent > open_indent and not _NVLINK_LINK.match(raw):
            counter = _COUNTER.match(raw.strip())
            if not counter:
                raise ParseError(f"line {number}: expected 'Counter: value', got {raw.strip()!r}")
            open_link["errors"][_snake(counter.group(1))] = _nvlink_value(counter.group(2))
            continue
        link_match = _NVLINK_LINK.match(raw)
        if not link_match:
            raise ParseError(f"line {number}: expected 'Link N: …', got {raw.strip()!r}")
        index, rest = int(link_match.group(1)), link_match.group(2)
        link = links.get(index)
        if link is None:
            link = {"link": index, "active": None, "speed_gb_s": None, "errors": {}}
            links[index] = link
            gpus[-1]["links"].append(link)
        open_link = None
        speed = re.fullmatch(r"(\d+(?:\.\d+)?) GB/s", rest)
        if speed:
            link["active"], link["speed_gb_s"] = True, float(speed.group(1))
        elif rest.lower() in ("<inactive>", "inactive"):
            link["active"], link["speed_gb_s"] = False, None
        elif rest == "":
            open_link, open_indent = link, indent
        else:
            counter = _COUNTER.match(rest)
            if not counter:
                raise ParseError(f"line {number}: cannot read link {index} value {rest!r}")
            link["errors"][_snake(counter.group(1))] = _nvlink_value(counter.group(2))
    if not gpus:
        raise ParseError("line 1: no 'GPU N: NAME (UUID: …)' line; not nvidia-smi nvlink output")
    return gpus


# --- which driver runs: kernel module and NVML -------------------------------------------------

# "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.148.08  Release Build …"
# "NVRM: loading NVIDIA UNIX x86_64 Kernel Module  535.161.08  Tue Feb 27 …"
_MODULE_LINE = re.compile(r"NVIDIA UNIX .*?Kernel Module(?: for \S+)?\s+(\d+\.\d+(?:\.\d+)?)\b")
_DRIVER_VERSION = re.compile(r"^\d+\.\d+(?:\.\d+)?$")
_SECTIONS = ("sysfs", "proc", "kernel-log", "nvidia-smi")


def _driver_sections(text: str) -> tuple[dict[str, list[str]], str | None]:
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    exit_status = None
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith("== exit "):
            exit_status = line[len("== exit "):].strip()
            current = None
            continue
        if line.startswith("== "):
            name = line[3:].strip()
            if name not in _SECTIONS:
                raise ParseError(f"line {number}: unknown section {name!r}")
            current = sections.setdefault(name, [])
            continue
        if current is None:
            if line.strip():
                raise ParseError(f"line {number}: {line!r} outside a '== section' block")
            continue
        if line.strip():
            current.append(line.strip())
    missing = [name for name in _SECTIONS if name not in sections]
    if missing:
        raise ParseError(f"line 1: sections missing: {', '.join(missing)} "
                         "(not the NvidiaDriverState command's output)")
    return sections, exit_status


def parse_nvidia_smi_driver(lines: list[str], exit_status: str | None) -> dict[str, Any]:
    """What `nvidia-smi --query-gpu=driver_version --format=csv,noheader` said.

    status: "ok" (versions per GPU), "mismatch" (the module loaded is not the installed
    library: after a driver change, before the reboot), "no-driver" (no module answers),
    "no-devices", "missing" (no nvidia-smi), "error" (anything else; message says what).
    """
    result: dict[str, Any] = {"status": "error", "versions": [], "library_version": None,
                              "message": None, "exit": None}
    if exit_status == "missing":
        result.update(status="missing", message="nvidia-smi is not installed")
        return result
    if exit_status is not None:
        try:
            result["exit"] = int(exit_status)
        except ValueError:
            raise ParseError(f"nvidia-smi exit status {exit_status!r} is not a number") from None
    text = "\n".join(lines)
    if "Driver/library version mismatch" in text:
        result.update(status="mismatch", message=lines[0])
        for line in lines:
            if line.startswith("NVML library version:"):
                result["library_version"] = line.split(":", 1)[1].strip()
    elif "couldn't communicate with the NVIDIA driver" in text:
        result.update(status="no-driver", message=lines[0])
    elif "No devices were found" in text:
        result.update(status="no-devices", message=lines[0])
    elif lines and result["exit"] == 0 and all(_DRIVER_VERSION.match(line) for line in lines):
        result.update(status="ok", versions=list(lines))
    else:
        result["message"] = lines[0] if lines else f"no output (exit {result['exit']})"
    return result


def parse_driver_state(text: str) -> dict[str, Any]:
    """The NVIDIA driver's state on a node (roles.nvidia.facts.NvidiaDriverState's output).

    Returns {"module": {"loaded", "version", "source"}, "nvidia_smi": parse_nvidia_smi_driver,
             "running_version"}:
    - the module: /sys/module/nvidia/version, else /proc/driver/nvidia/version; without
      either, what NVML says: "ok" means loaded at the version it reports, "mismatch" means
      a module is loaded and this boot's kernel log line names its version; "no-driver"
      means none is loaded (an old log line then describes a module since unloaded).
    - running_version: the loaded module's version, None when none is loaded or unknown.
    """
    sections, exit_status = _driver_sections(text)
    smi = parse_nvidia_smi_driver(sections["nvidia-smi"], exit_status)
    module: dict[str, Any] = {"loaded": False, "version": None, "source": None}
    sysfs = [line for line in sections["sysfs"] if _DRIVER_VERSION.match(line)]
    proc = [m.group(1) for m in map(_MODULE_LINE.search, sections["proc"]) if m]
    log = [m.group(1) for m in map(_MODULE_LINE.search, sections["kernel-log"]) if m]
    if sysfs:
        module.update(loaded=True, version=sysfs[0], source="sysfs")
    elif proc:
        module.update(loaded=True, version=proc[0], source="proc")
    elif smi["status"] == "ok" and len(set(smi["versions"])) == 1:
        module.update(loaded=True, version=smi["versions"][0], source="nvidia-smi")
    elif smi["status"] in ("mismatch", "no-devices"):
        module.update(loaded=True, version=log[-1] if log else None,
                      source="kernel-log" if log else None)
    return {"module": module, "nvidia_smi": smi, "running_version": module["version"]}

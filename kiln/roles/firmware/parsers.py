"""Parsers for the Mellanox firmware tools: `mlxfwmanager --query` (also `mlxup --query`)
and `mlxconfig -d DEV q`.

Pure functions, text in, plain data out; input that is not what the tool prints raises
`ParseError` naming the line. "N/A" becomes None.

parse_mlxfwmanager(text) -> [device]   "-E- No devices found …" -> []
  device: {index: int (the N of "Device #N:"), device_type: "ConnectX7", part_number,
           description, psid: "MT_0000000838", pci_device_name ("/dev/mst/mt4129_pciconf0"
           or "0000:18:00.0"), base_guid, base_mac: str | None,
           versions: {snake_case name ("fw", "pxe", "uefi", "fw_running" …):
                      {current: str | None, available: str | None}},
           status: "Up to date" | "Update required" | "No matching image found" | …,
           update_required: bool (status is "Update required"),
           other header fields, snake_cased, as str}

parse_mlxconfig(text) -> [device]   (`mlxconfig -d DEV q`; also `-e q` with three columns)
  device: {index: int, device_type: str, name: str, description: str, device: str,
           columns: ["next_boot"] or ["default", "current", "next_boot"],
           config: {PARAM: {value: str, code: int | None, raw: str, modified: bool,
                            default/current: str (raw, only with -e)}}}
  `value`/`code` split a raw "IB(1)" into "IB" and 1; "0" gives value "0", code None.
  They describe the Next Boot column: what the card will run after the next reset.
"""

from __future__ import annotations

import re
from typing import Any

from kiln.core.parsing import ParseError

_DEVICE = re.compile(r"^Device #(\d+):\s*$")
_FIELD = re.compile(r"^([A-Za-z][A-Za-z0-9 ]*?):\s*(.*?)\s*$")


def _snake(label: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", label.strip().lower()).strip("_")


def _na(value: str) -> str | None:
    return None if value in ("N/A", "") else value


def parse_mlxfwmanager(text: str) -> list[dict[str, Any]]:
    """Parse `mlxfwmanager --query`. See the module docstring for the keys."""
    devices: list[dict[str, Any]] = []
    in_versions = False
    seen_banner = False
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or set(line) == {"-"}:
            continue
        if line.startswith("Querying Mellanox devices firmware"):
            seen_banner = True
            continue
        if line.startswith("-E- No devices found"):
            return []
        if line.startswith("-W- "):
            continue  # warnings (e.g. DMA burning not supported) do not change the query
        if re.match(r"^Found \d+ device\(s\) requiring firmware update", line):
            continue
        if line.startswith("-E- "):
            raise ParseError(f"line {number}: mlxfwmanager error: {line[4:]}")
        device = _DEVICE.match(line)
        if device:
            devices.append({"index": int(device.group(1)), "versions": {}, "base_guid": None,
                            "base_mac": None, "status": None})
            in_versions = False
            continue
        if not devices:
            raise ParseError(
                f"line {number}: expected 'Device #N:' "
                f"{'after' if seen_banner else 'or'} 'Querying Mellanox devices firmware ...', "
                f"got {line[:80]!r}"
            )
        field = _FIELD.match(line)
        if field and field.group(1) != "Versions":
            key, value = _snake(field.group(1)), field.group(2)
            devices[-1][key] = value
            in_versions = False
            continue
        if field and field.group(1) == "Versions":
            # "Versions:         Current        Available" opens the per-image table.
            if field.group(2).split() != ["Current", "Available"]:
                raise ParseError(f"line {number}: unexpected versions header {line!r}")
            in_versions = True
            continue
        if in_versions:
            parts = line.rsplit(None, 2)
            if len(parts) != 3:
                raise ParseError(
                    f"line {number}: expected 'NAME CURRENT AVAILABLE' in the versions table, "
                    f"got {line!r}"
                )
            devices[-1]["versions"][_snake(parts[0])] = {
                "current": _na(parts[1]), "available": _na(parts[2]),
            }
            continue
        raise ParseError(f"line {number}: not mlxfwmanager output: {line[:80]!r}")
    if not devices:
        raise ParseError("line 1: no 'Device #N:' block; not mlxfwmanager --query output")
    for device in devices:
        if device.get("status") is None:
            raise ParseError(f"Device #{device['index']}: no 'Status:' line (output cut short?)")
        device["update_required"] = device["status"] == "Update required"
        for key in ("device_type", "part_number", "description", "psid", "pci_device_name"):
            device.setdefault(key, None)
    return devices


_CONFIG_HEADER = re.compile(r"^Configurations:\s+(.*?)\s*$")
_CODED = re.compile(r"^(.*)\((-?\d+)\)$")
_MLXCONFIG_NOTES = (
    "The '*' shows parameters",
    "Apply new Configuration",
)


def _split_value(raw: str) -> tuple[str, int | None]:
    coded = _CODED.match(raw)
    if coded:
        return coded.group(1), int(coded.group(2))
    return raw, None


def parse_mlxconfig(text: str) -> list[dict[str, Any]]:
    """Parse `mlxconfig -d DEV q` (or `-e q`). See the module docstring for the keys."""
    devices: list[dict[str, Any]] = []
    columns: list[str] | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or set(line) == {"-"}:
            continue
        if line.startswith(_MLXCONFIG_NOTES):
            continue
        if line.startswith("-E- "):
            raise ParseError(f"line {number}: mlxconfig error: {line[4:]}")
        device = _DEVICE.match(line)
        if device:
            devices.append({"index": int(device.group(1)), "columns": [], "config": {}})
            columns = None
            continue
        if not devices:
            raise ParseError(f"line {number}: expected 'Device #N:', got {line[:80]!r}")
        header = _CONFIG_HEADER.match(line)
        if header:
            columns = [_snake(c) for c in re.split(r"\s{2,}", header.group(1))]
            if not columns or columns[-1] != "next_boot":
                raise ParseError(f"line {number}: unexpected configurations header {line!r}")
            devices[-1]["columns"] = columns
            continue
        if columns is None:
            field = _FIELD.match(line)
            if not field:
                raise ParseError(f"line {number}: expected 'Name: value', got {line[:80]!r}")
            devices[-1][_snake(field.group(1))] = field.group(2)
            continue
        modified = line.startswith("*")
        tokens = line.lstrip("*").split()
        if len(tokens) != len(columns) + 1 or not re.fullmatch(r"[A-Za-z0-9_.\[\]]+", tokens[0]):
            raise ParseError(
                f"line {number}: expected 'PARAM {' '.join(c.upper() for c in columns)}', "
                f"got {line[:80]!r}"
            )
        values = dict(zip(columns, tokens[1:], strict=True))
        value, code = _split_value(values["next_boot"])
        entry: dict[str, Any] = {"value": value, "code": code, "raw": values["next_boot"],
                                 "modified": modified}
        for column in columns[:-1]:
            entry[column] = values[column]
        devices[-1]["config"][tokens[0]] = entry
    if not devices:
        raise ParseError("line 1: no 'Device #N:' block; not mlxconfig query output")
    for device in devices:
        if not device["columns"]:
            raise ParseError(
                f"Device #{device['index']}: no 'Configurations:' table (output cut short?)"
            )
        for key in ("device_type", "name", "description", "device"):
            device.setdefault(key, None)
    return devices

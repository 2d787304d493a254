"""Parsers for the HCA state: `ibstat` output and the /sys/class/infiniband tree.

Pure functions, text in, plain data out; input that is not what the tool prints raises
`ParseError` naming the line.

parse_ibstat(text) -> [ca]            empty output (a host with no HCA) -> []
  ca:   {name: "mlx5_0", ca_type: "MT4129", num_ports: int, firmware_version: str,
         hardware_version: str, node_guid: "0x…", system_image_guid: "0x…", ports: [port]}
  port: {port: int, state: "Active"|"Down"|"Initializing"|…, physical_state: "LinkUp"|
         "Polling"|"Disabled"|…, rate: int|float (Gb/s, e.g. 400), base_lid: int, lmc: int,
         sm_lid: int, capability_mask: "0x…", port_guid: "0x…",
         link_layer: "InfiniBand"|"Ethernet"}
  Keys ibstat prints that are not listed above are kept, snake_cased, as strings.
  "ibwarn: …" lines (libibumad, on stderr) are skipped; "ibpanic: …" (ibstat gave up, exit
  255, e.g. "stat of IB device 'mlx5_8' failed") is a ParseError that quotes it.

parse_sysfs_infiniband(text) -> [device]
  `text` is "PATH:VALUE" lines, one per sysfs file, as `grep -H . FILES` prints them (see
  `sysfs_listing` to produce it from a directory tree). PATH ends in
  DEVICE/ATTR or DEVICE/ports/N/ATTR or DEVICE/ports/N/{counters,hw_counters}/NAME.
  device: {name, hca_type, fw_ver, board_id, node_guid, sys_image_guid (str|None),
           ports: [port]} plus any other device attribute read, as str
  port:   {port: int, state: "ACTIVE"|"DOWN"|…, state_code: int|None,
           phys_state: "LinkUp"|"Polling"|…, phys_state_code: int|None,
           rate_gb_s: float|None, rate: str (as printed, "400 Gb/sec (4X NDR)"),
           link_layer: str|None, counters: {name: int}, hw_counters: {name: int}}
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from kiln.core.parsing import ParseError

_CA = re.compile(r"^CA '([^']+)'\s*$")
_PORT = re.compile(r"^Port (\d+):\s*$")
_FIELD = re.compile(r"^([A-Za-z][A-Za-z ]*?):\s*(.*?)\s*$")

_CA_INT = {"num_ports"}
_RENAME = {"number_of_ports": "num_ports"}
_PORT_INT = {"base_lid", "lmc", "sm_lid"}


def _snake(label: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", label.strip().lower()).strip("_")


def _rate(value: str) -> int | float | str:
    if re.fullmatch(r"\d+", value):
        return int(value)
    if re.fullmatch(r"\d+\.\d+", value):
        return float(value)
    return value


def parse_ibstat(text: str) -> list[dict[str, Any]]:
    """Parse `ibstat` (all CAs, or one CA). See the module docstring for the keys."""
    cas: list[dict[str, Any]] = []
    ca_lines: list[int] = []
    port: dict[str, Any] | None = None
    port_indent = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        if raw.startswith("ibwarn:"):
            continue  # libibumad's warnings on stderr; the CA blocks are still whole
        if raw.startswith("ibpanic:"):
            # ibstat gave up (exit 255): a CA it listed could not be read. The blocks before
            # are real, but the node's HCAs are not all readable: say so, not "garbage".
            raise ParseError(
                f"line {number}: ibstat failed after {len(cas)} CA(s): {raw.strip()}"
            )
        ca_match = _CA.match(raw)
        if ca_match:
            cas.append({"name": ca_match.group(1), "ports": []})
            ca_lines.append(number)
            port = None
            continue
        if not cas:
            raise ParseError(f"line {number}: expected \"CA 'NAME'\", got {raw.strip()!r}")
        indent = len(raw) - len(raw.lstrip())
        line = raw.strip()
        port_match = _PORT.match(line)
        if port_match:
            port = {"port": int(port_match.group(1))}
            port_indent = indent
            cas[-1]["ports"].append(port)
            continue
        field = _FIELD.match(line)
        if not field or indent == 0:
            raise ParseError(f"line {number}: expected an indented 'Name: value', got {line!r}")
        key, value = _snake(field.group(1)), field.group(2)
        key = _RENAME.get(key, key)
        if port is not None and indent > port_indent:
            if key in _PORT_INT:
                port[key] = _int(value, number)
            elif key == "rate":
                port[key] = _rate(value)
            else:
                port[key] = value
        else:
            port = None
            cas[-1][key] = _int(value, number) if key in _CA_INT else value
    for ca, line_number in zip(cas, ca_lines, strict=True):
        if ca.get("num_ports") is not None and ca["num_ports"] != len(ca["ports"]):
            # ibstat prints every port it counts; fewer means the capture was cut short.
            raise ParseError(
                f"line {line_number}: CA {ca['name']!r}: 'Number of ports: {ca['num_ports']}' but "
                f"{len(ca['ports'])} port blocks follow (output cut short?)"
            )
    return cas


def _int(value: str, number: int) -> int:
    try:
        return int(value, 0)
    except ValueError:
        raise ParseError(f"line {number}: expected a number, got {value!r}") from None


def _coded(value: str) -> tuple[int | None, str]:
    # sysfs prints port states as "4: ACTIVE", "5: LinkUp".
    match = re.fullmatch(r"(\d+):\s*(.*)", value)
    return (int(match.group(1)), match.group(2)) if match else (None, value)


def parse_sysfs_infiniband(text: str) -> list[dict[str, Any]]:
    """Parse "PATH:VALUE" lines read from /sys/class/infiniband. See the module docstring."""
    devices: dict[str, dict[str, Any]] = {}
    ports: dict[tuple[str, int], dict[str, Any]] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        path, sep, value = raw.partition(":")
        if not sep or "/" not in path:
            raise ParseError(f"line {number}: expected 'PATH:VALUE', got {raw.strip()!r}")
        parts = path.strip("/").split("/")
        value = value.strip()
        if "ports" in parts[:-1]:
            at = len(parts) - 1 - parts[::-1].index("ports")
            if at == 0 or at + 2 >= len(parts) or not parts[at + 1].isdigit():
                raise ParseError(f"line {number}: cannot place {path!r} (DEVICE/ports/N/ATTR)")
            name, port_no, rest = parts[at - 1], int(parts[at + 1]), parts[at + 2:]
            device = devices.setdefault(name, {"name": name, "ports": []})
            port = ports.get((name, port_no))
            if port is None:
                port = {"port": port_no, "state": None, "state_code": None, "phys_state": None,
                        "phys_state_code": None, "rate_gb_s": None, "rate": None,
                        "link_layer": None, "counters": {}, "hw_counters": {}}
                ports[(name, port_no)] = port
                device["ports"].append(port)
            if len(rest) == 2 and rest[0] in ("counters", "hw_counters"):
                try:
                    port[rest[0]][rest[1]] = int(value)
                except ValueError:
                    raise ParseError(f"line {number}: counter {rest[1]} is not a number: "
                                     f"{value!r}") from None
            elif rest == ["state"]:
                port["state_code"], port["state"] = _coded(value)
            elif rest == ["phys_state"]:
                port["phys_state_code"], port["phys_state"] = _coded(value)
            elif rest == ["rate"]:
                port["rate"] = value
                speed = re.match(r"(\d+(?:\.\d+)?) Gb/sec", value)
                port["rate_gb_s"] = float(speed.group(1)) if speed else None
            elif len(rest) == 1:
                port[rest[0]] = value
            # deeper files (gid_attrs, pkeys …) are not read
        else:
            if len(parts) < 2:
                raise ParseError(f"line {number}: cannot place {path!r} (DEVICE/ATTR)")
            name, attr = parts[-2], parts[-1]
            device = devices.setdefault(name, {"name": name, "ports": []})
            device[attr] = value
    result = []
    for name in sorted(devices, key=_natural):
        device = devices[name]
        for attr in ("hca_type", "fw_ver", "board_id", "node_guid", "sys_image_guid"):
            device.setdefault(attr, None)
        device["ports"].sort(key=lambda p: p["port"])
        result.append(device)
    return result


def _natural(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def sysfs_listing(root: Path) -> str:
    """The "PATH:VALUE" text `parse_sysfs_infiniband` reads, built from a directory tree.

    Paths are relative to `root`, so a copied /sys/class/infiniband tree parses the same
    as the live one.
    """
    lines = []
    for path in sorted(root.rglob("*")):
        if path.is_file():
            try:
                content = path.read_text(errors="replace").strip()
            except OSError:
                continue  # some sysfs attributes are write-only or need privileges
            if "\n" not in content:
                lines.append(f"{path.relative_to(root).as_posix()}:{content}")
    return "\n".join(lines) + "\n"

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

import json
import re
from pathlib import Path
from typing import Any

from kiln.core.parsing import ParseError
from kiln.roles.firmware.parsers import parse_mlxconfig

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


# -- the per-HCA report: one command per node, parsed here ------------------------------------
#
# `HcaReport` (roles.infiniband.facts) prints sections, each opened by a marker line:
#
#   ### kiln ibstat            ibstat's output ("### kiln ibstat missing": not installed)
#   ### kiln sysfs mlx5_0      KEY:VALUE lines: pci (the PCI address the device links to),
#                              board_id (the PSID), current_link_width, current_link_speed,
#                              netdev (one line per /sys/class/infiniband/DEV/device/net/*)
#   ### kiln ip                `ip -j addr show` (a JSON list)
#   ### kiln mlxconfig mlx5_0  `mlxconfig -d mlx5_0 -e q` ("### kiln mlxconfig missing")
#   ### kiln modules           the loaded kernel modules of interest, one a line
#   ### kiln os                /etc/os-release's ID (debian, ubuntu …)

MARKER = "### kiln "


def _sections(text: str) -> list[tuple[str, list[str], int]]:
    """(marker words, body lines, line number of the marker) in order."""
    sections: list[tuple[str, list[str], int]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if raw.startswith(MARKER):
            sections.append((raw[len(MARKER):].strip(), [], number))
        elif sections:
            sections[-1][1].append(raw)
        elif raw.strip():
            raise ParseError(f"line {number}: expected a '{MARKER}SECTION' line, got "
                             f"{raw.strip()[:80]!r}")
    return sections


def parse_ip_addr(text: str) -> dict[str, dict[str, Any]]:
    """`ip -j addr show` -> {ifname: {up: bool, operstate, mtu, link_type, ipv4: ["a/p"]}}."""
    if not text.strip():
        return {}
    try:
        links = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ParseError(f"line {exc.lineno}: ip -j addr: not JSON: {exc.msg}") from None
    if not isinstance(links, list):
        raise ParseError("line 1: ip -j addr: expected a JSON list of links")
    found = {}
    for link in links:
        if not isinstance(link, dict) or "ifname" not in link:
            continue  # ip prints {} for a link that vanished while it listed them
        found[link["ifname"]] = {
            "up": "UP" in link.get("flags", []),
            "operstate": link.get("operstate"),
            "mtu": link.get("mtu"),
            "link_type": link.get("link_type"),
            "ipv4": [f"{info['local']}/{info['prefixlen']}" for info in link.get("addr_info", [])
                     if info.get("family") == "inet" and info.get("scope", "global") == "global"],
        }
    return found


def _sysfs_section(lines: list[str], start: int) -> dict[str, Any]:
    found: dict[str, Any] = {"netdevs": []}
    for offset, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        key, sep, value = raw.partition(":")
        if not sep:
            raise ParseError(f"line {start + offset}: expected 'KEY:VALUE', got {raw!r}")
        value = value.strip()
        if key == "netdev":
            found["netdevs"].append(value)
        elif value:
            found[key] = value
    return found


def _width(value: str | None) -> int | None:
    # sysfs prints a bare number ("16"); some kernels' lspci-style "x16"
    if value is None:
        return None
    match = re.fullmatch(r"x?(\d+)", value.strip())
    return int(match.group(1)) if match else None


def parse_hca_report(text: str) -> dict[str, Any]:
    """Parse what `HcaReport` prints. Returns

        {hcas: [hca], links: {ifname: link (see parse_ip_addr)}, modules: [name],
         os: str | None, ibstat: bool (installed), mlxconfig: bool (installed)}
        hca: {device, ca_type, node_guid, port_guid, firmware, psid, state, physical_state,
              rate (Gb/s, int|float|None), link_layer, pci, pcie_width (int|None),
              pcie_speed, netdev (str|None), netdevs: [str], ipoib: ["a/p"],
              netdev_up (bool|None), mlxconfig ({PARAM: entry} as parse_mlxconfig's
              `config`, or None), mlxconfig_error (str|None)}

    HCAs are those ibstat lists, plus any only sysfs shows, in name order (mlx5_2 before
    mlx5_10); the port read is each HCA's first (a ConnectX-7 OSFP card has one).
    """
    report: dict[str, Any] = {"hcas": [], "links": {}, "modules": [], "os": None,
                              "ibstat": True, "mlxconfig": True}
    cas: list[dict[str, Any]] = []
    sysfs: dict[str, dict[str, Any]] = {}
    mlx: dict[str, tuple[dict[str, Any] | None, str | None]] = {}
    for words, lines, number in _sections(text):
        kind, _, name = words.partition(" ")
        body = "\n".join(lines)
        if kind == "ibstat":
            if name == "missing":
                report["ibstat"] = False
            else:
                try:
                    cas = parse_ibstat(body)
                except ParseError as exc:
                    raise ParseError(f"ibstat section (line {number}): {exc}") from None
        elif kind == "sysfs":
            sysfs[name] = _sysfs_section(lines, number)
        elif kind == "ip":
            try:
                report["links"] = parse_ip_addr(body)
            except ParseError as exc:
                raise ParseError(f"ip section (line {number}): {exc}") from None
        elif kind == "mlxconfig":
            if name == "missing":
                report["mlxconfig"] = False
                continue
            try:
                mlx[name] = (parse_mlxconfig(body)[0]["config"], None)
            except ParseError as exc:
                # one card that mlxconfig cannot open is that card's problem, not the node's
                mlx[name] = (None, str(exc))
        elif kind == "modules":
            report["modules"] = [line.strip() for line in lines if line.strip()]
        elif kind == "os":
            report["os"] = next((line.strip() for line in lines if line.strip()), None)
        else:
            raise ParseError(f"line {number}: unknown section {words!r}")
    by_name = {ca["name"]: ca for ca in cas}
    for name in sorted(set(by_name) | set(sysfs), key=_natural):
        ca = by_name.get(name, {})
        port = (ca.get("ports") or [{}])[0]
        dev = sysfs.get(name, {"netdevs": []})
        netdevs = sorted(dev["netdevs"], key=_natural)
        netdev = netdevs[0] if netdevs else None
        link = report["links"].get(netdev) if netdev else None
        config, error = mlx.get(name, (None, None))
        report["hcas"].append({
            "device": name,
            "ca_type": ca.get("ca_type"),
            "node_guid": ca.get("node_guid"),
            "port_guid": port.get("port_guid"),
            "firmware": ca.get("firmware_version"),
            "psid": dev.get("board_id"),
            "state": port.get("state"),
            "physical_state": port.get("physical_state"),
            "rate": port.get("rate") if isinstance(port.get("rate"), int | float) else None,
            "link_layer": port.get("link_layer"),
            "pci": dev.get("pci"),
            "pcie_width": _width(dev.get("current_link_width")),
            "pcie_speed": dev.get("current_link_speed"),
            "netdev": netdev,
            "netdevs": netdevs,
            "ipoib": list(link["ipv4"]) if link else [],
            "netdev_up": link["up"] if link else None,
            "mlxconfig": config,
            "mlxconfig_error": error,
        })
    return report


def parse_mlxfwreset_query(text: str) -> dict[str, Any]:
    """`mlxfwreset -d DEV q` -> {levels: {N: {text, supported: bool, default: bool}},
    supported: bool}. `supported`: the card can be reset with the driver restarted and the
    PCI link reset (level 3) or live-patched (level 0) without a reboot, i.e. `mlxfwreset
    reset` activates new firmware settings. Output that lists no reset level (the tool
    missing, an error) gives supported False."""
    levels: dict[int, dict[str, Any]] = {}
    in_levels = False
    for raw in text.splitlines():
        line = raw.strip()
        if line.lower().startswith("reset-levels"):
            in_levels = True
            continue
        if line.lower().startswith("reset-types") or line.lower().startswith("reset-sync"):
            in_levels = False
            continue
        match = re.match(r"^(\d+):\s*(.*?)\s*-(Supported|Not Supported)\s*(\(default\))?",
                         line)
        if in_levels and match:
            levels[int(match.group(1))] = {
                "text": match.group(2),
                "supported": match.group(3) == "Supported",
                "default": bool(match.group(4)),
            }
    supported = any(levels.get(level, {}).get("supported") for level in (3,))
    return {"levels": levels, "supported": supported}

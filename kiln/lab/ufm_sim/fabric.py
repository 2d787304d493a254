"""The UFM simulator's fabric model: the lab's HCAs plus a simulated NDR switch fabric.

Built afresh from the lab directory each time it is asked for, so a fault injected with
`kiln lab fault` (which rewrites `<lab>/hw/<node>/faults.json`) or a node powered off shows
up at the next request, as it would at a real UFM's next fabric sweep.

- Hosts: every GPU node's eight ConnectX-7 HCAs, read through `lab.hwsim.view.load_view`,
  i.e. with the node's active faults applied exactly as the node's own `ibstat` shows them
  (`hca-port-down`: port Down with the fault's physical state; `hca-rate`: lower rate). A
  node the lab state file records as powered off has its links down (Polling).
- Switches (simulated; nothing in the lab stands behind them): one scalable unit of NVIDIA
  Quantum-2 QM9700 NDR switches (64 ports, two per OSFP cage, labelled `cage/split`),
  rail-optimised: leaf `leaf-rail<k>` takes HCA `mlx5_<k>` of every node, node of lab index
  i on leaf port i (ports 1-32 face hosts); ports 33-64 of every leaf go up, eight to each
  of four spines `spine-<s>`, so the unit is non-blocking. Switch GUIDs come from the lab
  seed (the seed the hardware profiles were made with), so a rebuilt lab has the same ones.

Only cabled ports exist in the model (uncabled switch ports are left out), a link's two
ends always agree on its state, and a link is counted in `links` only while it is up.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln.lab.hwsim.view import HardwareMissing, load_view
from kiln.lab.state import node_address

SWITCH_MODEL = "MQM9700"
SWITCH_PORTS = 64
LEAF_HOST_PORTS = 32  # ports 1..32 face hosts, 33..64 go up
SPINES = 4
LINKS_PER_LEAF_SPINE = (SWITCH_PORTS - LEAF_HOST_PORTS) // SPINES
SWITCH_FW = "31.2012.1068"
# LIDs: the SM is LID 1 and the hardware profiles give HCAs 2 + 8(i-1) + k (i <= 244, so
# below 1960); switches take theirs from here up.
LEAF_LID_BASE = 3000
SPINE_LID_BASE = 3100
# Switches' GUIDs: an NVIDIA (Mellanox) OUI, the EUI-64 "0300" filler, a seeded tail.
SWITCH_GUID_PREFIX = "fc6a1c0300"
DEFAULT_SEED = "kiln-lab"

# ibstat's physical-state words -> UFM's
PHYSICAL_STATES = {
    "LinkUp": "Link Up",
    "Polling": "Polling",
    "Disabled": "Disabled",
    "Sleep": "Sleep",
    "LinkErrorRecovery": "Link Error Recovery",
}
# per-lane signalling rate (Gb/s) -> IB speed name
LANE_SPEEDS = {2.5: "SDR", 5: "DDR", 10: "QDR", 14: "FDR", 25: "EDR", 50: "HDR", 100: "NDR"}
SUPPORTED_SPEEDS = ["SDR", "DDR", "QDR", "FDR", "EDR", "HDR", "NDR"]
SUPPORTED_WIDTHS = ["1x", "2x", "4x"]
LANES = 4


class FabricError(RuntimeError):
    """The lab's files do not make a fabric (the message names the file or node)."""


@dataclass(eq=False)  # identity: ports and peers point at each other
class System:
    guid: str  # 16 hex digits, no 0x: UFM's `name` of the system
    system_name: str
    kind: str  # "host" | "switch"
    role: str  # "endpoint" | "tor" | "core"
    ip: str
    description: str
    model: str
    fw_version: str
    psid: str
    tier: int
    ports: list[Port] = field(default_factory=list)


@dataclass(eq=False)
class Port:
    system: System
    guid: str
    number: int
    dname: str
    node_description: str
    path: str
    lid: int
    physical_state: str
    logical_state: str
    rate: float | None  # Gb/s while Active
    hca: str | None = None  # mlx5_N for host ports
    fault: str | None = None  # the fault kind behind this port's state, host side
    peer: Port | None = None

    @property
    def name(self) -> str:
        return f"{self.guid}_{self.number}"

    @property
    def active(self) -> bool:
        return self.logical_state == "Active"

    @property
    def speed_width(self) -> tuple[str | None, str | None]:
        if not self.active or not self.rate:
            return None, None
        lane = self.rate / LANES
        return LANE_SPEEDS.get(lane, LANE_SPEEDS.get(int(lane))), f"{LANES}x"

    @property
    def degraded(self) -> bool:
        """Up, but below the NDR 4x both ends are capable of."""
        return self.active and (self.rate or 0) < 400


@dataclass
class Fabric:
    systems: list[System]

    def ports(self) -> list[Port]:
        return [port for system in self.systems for port in system.ports]

    def port(self, name: str) -> Port | None:
        return next((p for p in self.ports() if p.name == name), None)

    def system(self, key: str) -> System | None:
        """A system by GUID (UFM's name for it) or host/switch name."""
        key = key.lower()
        return next(
            (s for s in self.systems if key in (s.guid, s.system_name.lower())), None
        )

    def hosts(self) -> list[System]:
        return [s for s in self.systems if s.kind == "host"]

    def hca_port_guids(self) -> set[str]:
        return {p.guid for s in self.hosts() for p in s.ports}


def bare_guid(guid: str) -> str:
    """0x946dae0300a1b2c3 -> 946dae0300a1b2c3 (UFM writes GUIDs without 0x)."""
    return guid.lower().removeprefix("0x").rjust(16, "0")


def switch_guid(seed: str, name: str) -> str:
    tail = hashlib.sha256(f"{seed}/ufm-sim/{name}".encode()).hexdigest()[:6]
    return SWITCH_GUID_PREFIX + tail


def port_dname(number: int) -> str:
    """An NDR switch port's label: two logical ports per OSFP cage (33 -> "17/1")."""
    return f"{(number + 1) // 2}/{(number - 1) % 2 + 1}"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as exc:
        raise FabricError(f"{path}: cannot read: {exc}") from None


def _power_states(lab: Path) -> dict[str, str] | None:
    """Node name -> the state the lab state file records; None when there is no lab state.

    Read leniently (name and state only): the UFM simulator must not fail on state fields
    it does not use.
    """
    document = _read_json(lab / "state.json")
    if not isinstance(document, dict):
        return None
    nodes = document.get("nodes")
    if not isinstance(nodes, list):
        raise FabricError(f"{lab / 'state.json'}: field 'nodes' is not a list")
    return {
        str(node.get("name")): str(node.get("state"))
        for node in nodes
        if isinstance(node, dict) and node.get("name")
    }


def _host_dirs(lab: Path, powers: dict[str, str] | None) -> list[Path]:
    hw = lab / "hw"
    if powers is not None:  # the lab's nodes now, not leftovers of an earlier lab
        dirs = [hw / name for name in powers if (hw / name / "profile.json").exists()]
    else:
        dirs = [p.parent for p in hw.glob("*/profile.json")]
    return sorted(dirs)


def _host(hw_dir: Path, powered: bool) -> System | None:
    try:
        view = load_view(hw_dir)
    except HardwareMissing:
        return None
    except (KeyError, TypeError, ValueError) as exc:
        raise FabricError(f"{hw_dir}: hardware profile or faults unreadable: {exc!r}") from None
    profile = view.profile
    if not profile.get("hcas"):
        return None  # a service node: not on the InfiniBand fabric
    node = profile["node"]
    first = profile["hcas"][0]
    system = System(
        guid=bare_guid(first["node_guid"]),
        system_name=node,
        kind="host",
        role="endpoint",
        ip=node_address(profile["index"]),
        description="Computer",
        model="N/A",
        fw_version=first["fw_version"],
        psid=first["psid"],
        tier=1,
    )
    down_by = {f["hca"]: f["kind"] for f in view.faults if f["kind"] == "hca-port-down"}
    slow_by = {f["hca"]: f["kind"] for f in view.faults if f["kind"] == "hca-rate"}
    for k, hca in enumerate(profile["hcas"]):
        hw_port = hca["ports"][0]
        active = powered and hw_port["state"] == "Active"
        phys = PHYSICAL_STATES.get(hw_port["phys_state"], hw_port["phys_state"])
        system.ports.append(
            Port(
                system=system,
                guid=bare_guid(hw_port["port_guid"]),
                number=hw_port["port"],
                dname=f"HCA-{k + 1}/{hw_port['port']}",
                node_description=f"{node} {hca['name']}",
                path=f"default / Computer: {node} / {hca['name']} / {hw_port['port']}",
                lid=hw_port["lid"] if active else 65535,
                physical_state=phys if powered else "Polling",
                logical_state="Active" if active else "Down",
                rate=float(hw_port["rate"]) if active else None,
                hca=hca["name"],
                fault=down_by.get(k) or slow_by.get(k),
            )
        )
    return system


def _switch(seed: str, name: str, role: str, lid: int, tier: int) -> tuple[System, int]:
    switch = System(
        guid=switch_guid(seed, name),
        system_name=name,
        kind="switch",
        role=role,
        ip="0.0.0.0",  # no switch management network in the lab
        description=SWITCH_MODEL,
        model=SWITCH_MODEL,
        fw_version=SWITCH_FW,
        psid="N/A",
        tier=tier,
    )
    return switch, lid


def _switch_port(switch: System, lid: int, number: int, peer: Port | None) -> Port:
    dname = port_dname(number)
    up = peer is None or peer.active
    port = Port(
        system=switch,
        guid=switch.guid,
        number=number,
        dname=dname,
        node_description=f"{switch.system_name}:{dname}",
        path=f"default / Switch: {switch.system_name} / {dname}",
        lid=lid,
        # The far end of a disabled HCA port keeps polling; otherwise both ends agree.
        physical_state="Link Up" if up else "Polling",
        logical_state="Active" if up else "Down",
        rate=(peer.rate if peer is not None else 400.0) if up else None,
        peer=peer,
    )
    if peer is not None:
        peer.peer = port
    switch.ports.append(port)
    return port


def build_fabric(lab: Path) -> Fabric:
    """The fabric as it is now: hosts from `<lab>/hw/`, power from `<lab>/state.json`."""
    lab = Path(lab)
    powers = _power_states(lab)
    hosts: list[tuple[int, System]] = []
    seed = DEFAULT_SEED
    for hw_dir in _host_dirs(lab, powers):
        powered = powers is None or powers.get(hw_dir.name) != "off"
        host = _host(hw_dir, powered)
        if host is None:
            continue
        profile = _read_json(hw_dir / "profile.json")
        seed = profile.get("seed", seed)
        index = profile["index"]
        if not 1 <= index <= LEAF_HOST_PORTS:
            raise FabricError(
                f"{hw_dir / 'profile.json'}: node {host.system_name} has lab index {index}; the "
                f"simulated fabric is one scalable unit of {LEAF_HOST_PORTS} GPU nodes "
                f"(leaf ports 1-{LEAF_HOST_PORTS})"
            )
        hosts.append((index, host))
    hosts.sort(key=lambda item: item[0])
    rails = max((len(h.ports) for _, h in hosts), default=8)
    leaves = []
    for k in range(rails):
        leaf, lid = _switch(seed, f"leaf-rail{k}", "tor", LEAF_LID_BASE + k + 1, 2)
        leaves.append((leaf, lid))
    spines = []
    for s in range(SPINES):
        spine, lid = _switch(seed, f"spine-{s + 1}", "core", SPINE_LID_BASE + s + 1, 3)
        spines.append((spine, lid))
    for index, host in hosts:
        for k, hca_port in enumerate(host.ports):
            leaf, lid = leaves[k]
            _switch_port(leaf, lid, index, hca_port)
    for k, (leaf, leaf_lid) in enumerate(leaves):
        for s, (spine, spine_lid) in enumerate(spines):
            for j in range(LINKS_PER_LEAF_SPINE):
                spine_port = _switch_port(spine, spine_lid, k * LINKS_PER_LEAF_SPINE + j + 1, None)
                up = LEAF_HOST_PORTS + s * LINKS_PER_LEAF_SPINE + j + 1
                _switch_port(leaf, leaf_lid, up, spine_port)
    for switch, _ in leaves + spines:
        switch.ports.sort(key=lambda p: p.number)
    return Fabric([h for _, h in hosts] + [s for s, _ in leaves] + [s for s, _ in spines])

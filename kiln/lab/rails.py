"""The lab's InfiniBand rails: one bridge per rail on the controller, one interface per HCA.

A GPU node's HCA *k* (`mlx5_k`) is cabled to rail *k*, as on a rail-optimised fabric (the UFM
simulator's `leaf-rail<k>`). The lab has no InfiniBand data path, so each rail is a Linux
bridge on the controller, `kilnrail<k>`, with no address (nothing on the controller is on a
rail, and the controller forwards nothing to or from one); each HCA is a veth pair:

- in the node's netns, the HCA's IPoIB netdev name from its hardware profile (`ibp26s0` for
  the HCA at 0000:1a:00.0: `hwsim.profile.ipoib_netdev`, the name the boot log gives it),
  MTU 4092 (IPoIB datagram mode on a 4K IB MTU, the NDR default partition's), a locally
  administered MAC made from the node index and rail;
- on the controller, `kr<k>-<node>` (at most 15 characters), a port of `kilnrail<k>`, MTU
  65520 (IPoIB connected mode's largest) so a node that raises its own MTU is not cut short.

Link state follows the hardware, not the node's OS: the controller's end is the cable. It is
up while the node is powered on and its port is Active, and down while the node is off or
an `hca-port-down` fault holds the port down (the node then sees NO-CARRIER, as an IPoIB
interface does when its port is Down; `ip link set up` inside the node cannot cure it). The
fault is read through `hwsim.faults.apply_faults`, the same view `ibstat` prints, so the two
always agree; `hca-rate` leaves the link up.

The node's own end is the node's business, as on real hardware: it exists from the start,
admin-down and without addresses, and the node's network configuration brings it up. A power
off loses what the running OS set on it (addresses, admin state).
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.lab.host import LabError
from kiln.lab.hwsim.faults import apply_faults
from kiln.lab.hwsim.profile import HCA_COUNT, ipoib_netdev

BRIDGE_PREFIX = "kilnrail"
HOST_END_PREFIX = "kr"
# IPoIB datagram mode: the IB MTU (4096 on an NDR fabric whose partition allows it) less the
# 4-byte IPoIB header. 2044 is the same on a 2K-MTU partition; connected mode goes to 65520.
IPOIB_MTU = 4092
HOST_END_MTU = 65520
RAILS = HCA_COUNT

_BRIDGE_RE = re.compile(rf"^{BRIDGE_PREFIX}\d+$")
_HOST_END_RE = re.compile(rf"^{HOST_END_PREFIX}\d+-")


def bridge_name(rail: int) -> str:
    return f"{BRIDGE_PREFIX}{rail}"


def host_end(node: str, rail: int) -> str:
    name = f"{HOST_END_PREFIX}{rail}-{node}"
    if len(name) > 15:
        raise ValueError(f"node name {node!r} is too long for a rail interface name ({name})")
    return name


def rail_mac(index: int, rail: int) -> str:
    """02:6b:6c ("kl", locally administered) : rail : node index — unique in the lab."""
    return f"02:6b:6c:{rail:02x}:{index >> 8 & 0xFF:02x}:{index & 0xFF:02x}"


@dataclass(frozen=True)
class Rail:
    rail: int  # = the HCA's index (mlx5_<rail>)
    hca: str
    netdev: str  # the node's end
    host_end: str  # the controller's end
    bridge: str
    mac: str


def node_rails(node: str, index: int, profile: dict[str, Any]) -> list[Rail]:
    """One rail per HCA in the profile (none for a node without HCAs)."""
    return [
        Rail(rail, hca["name"], ipoib_netdev(hca), host_end(node, rail), bridge_name(rail),
             rail_mac(index, rail))
        for rail, hca in enumerate(profile.get("hcas", []))
    ]


def carriers(profile: dict[str, Any], faults: list[dict[str, Any]]) -> dict[int, bool]:
    """Rail -> whether its port has a link, from the same view the simulated tools print."""
    view = apply_faults(profile, faults)
    return {
        rail: all(port["state"] != "Down" for port in hca["ports"])
        for rail, hca in enumerate(view["hcas"])
    }


def read_hardware(hw: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The node's profile.json and faults.json (lab/hwsim)."""
    profile = json.loads((hw / "profile.json").read_text())
    faults_path = hw / "faults.json"
    faults = json.loads(faults_path.read_text()).get("faults", []) if faults_path.exists() else []
    return profile, faults


# -- what to run: `ip -batch` lines (pure, so unit tests read them) ------------------------


def bridge_commands(rails: int = RAILS) -> list[str]:
    lines = []
    for rail in range(rails):
        name = bridge_name(rail)
        # No IPv6 link-local either: the controller has no address on a rail.
        lines += [f"link set dev {name} addrgenmode none", f"link set dev {name} up"]
    return lines


def create_commands(rails: Sequence[Rail], netns: str) -> list[str]:
    """Controller side: the pairs, their ends in the rail bridges, cable unplugged (down)."""
    lines = []
    for r in rails:
        lines += [
            f"link add {r.host_end} mtu {HOST_END_MTU} type veth peer name {r.netdev} "
            f"address {r.mac} mtu {IPOIB_MTU} netns {netns}",
            f"link set dev {r.host_end} addrgenmode none",
            f"link set dev {r.host_end} master {r.bridge}",
        ]
    return lines


def carrier_commands(rails: Sequence[Rail], up: dict[int, bool]) -> list[str]:
    return [f"link set dev {r.host_end} {'up' if up.get(r.rail) else 'down'}" for r in rails]


def power_off_commands(netdevs: Iterable[str]) -> list[str]:
    """In the node's netns: what the running OS set on its rail interfaces is gone."""
    lines = []
    for netdev in netdevs:
        lines += [f"addr flush dev {netdev}", f"link set dev {netdev} down"]
    return lines


def leftovers(links: Iterable[str]) -> tuple[list[str], list[str]]:
    """(controller ends, bridges) among link names: what `delete_all` removes."""
    names = list(links)
    return (sorted(n for n in names if _HOST_END_RE.match(n)),
            sorted(n for n in names if _BRIDGE_RE.match(n)))


# -- doing it ---------------------------------------------------------------------------


def _ip_batch(lines: list[str], netns: str | None = None, check: bool = True) -> None:
    if not lines:
        return
    argv = ["ip", *(["-n", netns] if netns else []), "-force", "-batch", "-"]
    result = subprocess.run(argv, input="\n".join(lines) + "\n", capture_output=True, text=True)
    if check and result.returncode != 0:
        where = f" in netns {netns}" if netns else ""
        raise LabError(f"rail setup{where} failed: {result.stderr.strip()}")


def _link_names() -> list[str]:
    out = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True).stdout
    return [link.get("ifname", "") for link in json.loads(out or "[]")]


def ensure_bridges(rails: int = RAILS) -> None:
    """`kilnrail0`…: made when missing, no address, up. Idempotent."""
    present = set(_link_names())
    for rail in range(rails):
        name = bridge_name(rail)
        if name not in present:
            _ip_batch([f"link add {name} mtu {HOST_END_MTU} type bridge"])
    _ip_batch(bridge_commands(rails))


def create_node_rails(node: str, index: int, netns: str, hw: Path) -> list[Rail]:
    """The node's rail interfaces, anew (a stale controller end is removed first): down, as
    for a node that is powered off."""
    profile, _ = read_hardware(hw)
    rails = node_rails(node, index, profile)
    stale = set(_link_names())
    _ip_batch([f"link del dev {r.host_end}" for r in rails if r.host_end in stale])
    _ip_batch(create_commands(rails, netns))
    return rails


def _present_rails(node: str, netns: str, hw: Path) -> list[Rail]:
    """The node's rails whose controller end exists (none for a node without HCAs)."""
    profile, _ = read_hardware(hw)
    present = set(_link_names())
    # The index only names the MAC, which the state of a link does not need.
    return [r for r in node_rails(node, 0, profile) if r.host_end in present]


def set_links(node: str, netns: str, hw: Path, powered: bool) -> dict[int, bool]:
    """Each rail's link as the node's power and its ports' state (faults applied) say."""
    if not (hw / "profile.json").exists():
        return {}
    rails = _present_rails(node, netns, hw)
    profile, faults = read_hardware(hw)
    up = carriers(profile, faults) if powered else {}
    _ip_batch(carrier_commands(rails, up))
    return {r.rail: bool(up.get(r.rail)) for r in rails}


def power_off(node: str, netns: str, hw: Path) -> None:
    """Links down, and the node's ends lose what its OS set (safe when nothing is there)."""
    if not (hw / "profile.json").exists():
        return
    rails = _present_rails(node, netns, hw)
    _ip_batch(carrier_commands(rails, {}), check=False)
    _ip_batch(power_off_commands(r.netdev for r in rails), netns=netns, check=False)


def delete_all() -> None:
    """Every rail interface and bridge there is, whatever the state file says. Idempotent."""
    ends, bridges = leftovers(_link_names())
    _ip_batch([f"link del dev {name}" for name in ends + bridges], check=False)

"""The lab network: host bridge `kilnbr0` (10.231.0.1/24), one network namespace per node.

Node `<name>` lives in netns `kiln-<name>`; a veth pair joins it to the bridge: `kv-<name>`
on the host side (an interface name has at most 15 characters), `eth0` inside. The host
does not forward (nodes have no route out of the lab); the default route via the bridge
is what a node on a real management network has.
"""

from __future__ import annotations

import json
import os
import signal

from kiln.lab.host import run
from kiln.lab.state import BRIDGE, GATEWAY, PREFIX, netns_name

NETNS_PREFIX = "kiln-"
VETH_PREFIX = "kv-"


def veth_name(node: str) -> str:
    name = f"{VETH_PREFIX}{node}"
    if len(name) > 15:
        raise ValueError(f"node name {node!r} is too long for an interface name")
    return name


def _links() -> list[dict]:
    return json.loads(run(["ip", "-j", "link", "show"]).stdout or "[]")


def link_exists(name: str) -> bool:
    return run(["ip", "link", "show", "dev", name], check=False).returncode == 0


def ensure_bridge() -> None:
    if not link_exists(BRIDGE):
        run(["ip", "link", "add", BRIDGE, "type", "bridge"])
    addresses = run(["ip", "-j", "addr", "show", "dev", BRIDGE]).stdout
    if f'"{GATEWAY}"' not in addresses:
        run(["ip", "addr", "add", f"{GATEWAY}/{PREFIX}", "dev", BRIDGE])
    run(["ip", "link", "set", BRIDGE, "up"])


def add_bmc_addresses(addresses: list[str]) -> None:
    """The BMCs' own addresses (10.231.1.x), host-side on the bridge: each BMC emulator
    listens on its node's BMC address, as a real BMC has its own on the management network."""
    present = run(["ip", "-j", "addr", "show", "dev", BRIDGE]).stdout
    for address in addresses:
        if f'"{address}"' not in present:
            run(["ip", "addr", "add", f"{address}/32", "dev", BRIDGE])


def lab_netns() -> list[str]:
    """Every kiln network namespace there is, whatever the state file says."""
    out = run(["ip", "-j", "netns", "list"], check=False).stdout.strip()
    names = [entry["name"] for entry in json.loads(out)] if out else []
    return sorted(name for name in names if name.startswith(NETNS_PREFIX))


def lab_veths() -> list[str]:
    return sorted(
        link["ifname"] for link in _links() if link.get("ifname", "").startswith(VETH_PREFIX)
    )


def create_node_network(node: str, address: str) -> None:
    """Netns + veth + address + default route; starts over if a stale one is there."""
    ns, veth = netns_name(node), veth_name(node)
    if ns in lab_netns():
        delete_node_network(node)
    run(["ip", "netns", "add", ns])
    run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns])
    run(["ip", "link", "set", veth, "master", BRIDGE, "up"])
    batch = [
        "link set lo up",
        f"addr add {address}/{PREFIX} dev eth0",
        "link set eth0 up",
        f"route add default via {GATEWAY}",
    ]
    for command in batch:
        run(["ip", "-n", ns, *command.split()])


def netns_pids(ns: str) -> list[int]:
    out = run(["ip", "netns", "pids", ns], check=False).stdout
    return [int(pid) for pid in out.split()]


def kill_netns_processes(ns: str) -> None:
    """The safety net: whatever still runs in the node's netns is killed."""
    for pid in netns_pids(ns):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def delete_node_network(node: str) -> None:
    ns, veth = netns_name(node), veth_name(node)
    if link_exists(veth):
        run(["ip", "link", "del", veth], check=False)
    if ns in lab_netns():
        kill_netns_processes(ns)
        run(["ip", "netns", "del", ns], check=False)


def delete_all() -> None:
    """Every kiln netns, veth and the bridge: idempotent, needs no state file."""
    for ns in lab_netns():
        kill_netns_processes(ns)
        run(["ip", "netns", "del", ns], check=False)
    for veth in lab_veths():
        run(["ip", "link", "del", veth], check=False)
    if link_exists(BRIDGE):
        run(["ip", "link", "del", BRIDGE], check=False)

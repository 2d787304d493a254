"""The running lab as pyinfra inventory groups (what `inventory/lab.py` exposes).

Host data uses the same keys as production (roles/inventory.py `host_data`), plus what
only the lab needs: its own key, and no host key checking (every reset makes a new host
key on the same address; acceptable on the lab's private bridge, never in production).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lab.state import LabState, NodeState, StateError, lab_dir, load_state

LAB_SKU = "lab"
LAB_RACK = "lab"


def lab_host_data(state: LabState, node: NodeState) -> dict[str, Any]:
    return {
        "ssh_hostname": node.address,
        "ssh_user": state.ssh_user,
        "ssh_port": node.ssh_port,
        "ssh_key": state.ssh_key,
        "ssh_known_hosts_file": "/dev/null",
        "ssh_strict_host_key_checking": "no",
        "kiln_cluster": "lab",
        "kiln_node": node.name,
        "kiln_sku": LAB_SKU,
        "kiln_role": node.role,
        "kiln_rack": LAB_RACK,
    }


def lab_groups(state: LabState) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Groups gpu, service and rack_lab of `@metal/<node>` hosts (empty groups left out)."""
    groups: dict[str, list[tuple[str, dict[str, Any]]]] = {"gpu": [], "service": []}
    groups[f"rack_{LAB_RACK}"] = []
    for node in state.nodes:
        entry = (f"@metal/{node.name}", lab_host_data(state, node))
        groups[node.role].append(entry)
        groups[f"rack_{LAB_RACK}"].append(entry)
    return {name: hosts for name, hosts in groups.items() if hosts}


def inventory_groups(directory: Path | None = None) -> dict[str, list]:
    """For inventory/lab.py: the groups, or pyinfra's InventoryError saying why there are none."""
    from pyinfra.api.exceptions import InventoryError

    try:
        state = load_state(directory or lab_dir())
    except StateError as exc:
        raise InventoryError(f"inventory/lab.py: {exc}") from None
    if not state.nodes:
        raise InventoryError(f"inventory/lab.py: the lab in {state.lab_dir} has no nodes")
    return lab_groups(state)

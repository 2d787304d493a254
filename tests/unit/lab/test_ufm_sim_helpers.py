"""Shared by the UFM simulator's unit tests: a lab directory with real hwsim hardware, and
the field names the UFM REST reference (shared/specs/ufm-rest-api.md) documents."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from kiln.lab.hwsim import lab_hooks

# §2.3 System object fields (the ones the reference confirms in a sample or in NVIDIA code)
SYSTEM_FIELDS = {
    "name", "guid", "system_guid", "system_name", "type", "description", "model", "vendor",
    "ip", "is_manual_ip", "technology", "state", "severity", "total_alarms", "role",
    "sm_mode", "server_operation_mode", "fw_version", "sw_version", "psid", "temperature",
    "capabilities", "groups", "ports", "modules", "cpus_number", "cpu_speed", "cpu_type",
    "ram", "has_ufm_agent", "is_managed", "mirroring_template", "script", "url",
}
# §3.2 Port object fields
PORT_FIELDS = {
    "name", "guid", "systemID", "system_name", "node_description", "description", "number",
    "external_number", "dname", "path", "physical_state", "logical_state", "active_speed",
    "active_width", "enabled_speed", "supported_speed", "enabled_width", "supported_width",
    "lid", "mtu", "tier", "mirror", "severity", "high_ber_severity", "capabilities", "peer",
    "peer_guid", "peer_node_guid", "peer_lid", "peer_node_name", "peer_node_description",
    "peer_port_dname", "module",
}
# §4.1 Link fields
LINK_FIELDS = {
    "name", "source_guid", "source_port", "source_port_dname", "source_port_name",
    "source_port_node_description", "destination_guid", "destination_port",
    "destination_port_dname", "destination_port_name", "destination_port_node_description",
    "width", "severity", "capabilities",
}
# §4.2 Unhealthy ports: list items, and what the single-port form adds
UNHEALTHY_FIELDS = {
    "UnhealthyNode", "UnhealthyPort", "UnhealthyGUID", "UnhealthyPortNumber",
    "UnhealthyPortDname", "PeerNode", "PeerPort", "PeerGUID", "PeerLID", "PeerPortNumber",
    "PeerPortDname", "Condition", "State", "StatusTime",
}
UNHEALTHY_SINGLE_FIELDS = UNHEALTHY_FIELDS | {
    "PeerNodeType", "UnhealthyNodeType", "UnhealthyPortNodeDesc", "UnhealthyPortPeerNodeDesc",
}
# §4.3 Event fields (v6.17+)
EVENT_FIELDS = {
    "id", "name", "type", "event_type", "severity", "timestamp", "counter", "category",
    "object_name", "object_path", "write_to_syslog", "description",
}

USER, PASSWORD = "admin", "lab-test-password"


def make_lab(root: Path, gpu_nodes: int = 3, service_nodes: int = 1) -> Path:
    """A lab directory holding what `kiln lab up` writes under hw/ (no state.json)."""
    names = [(f"gpu-{i:03d}", "gpu") for i in range(1, gpu_nodes + 1)]
    names += [(f"svc-{i:03d}", "service") for i in range(1, service_nodes + 1)]
    for index, (name, role) in enumerate(names, start=1):
        lab_hooks.prepare_node_hardware(root, name, index, role, None)
    return root


def profile(lab: Path, node: str) -> dict:
    return json.loads((lab / "hw" / node / "profile.json").read_text())


def auth_header(user: str = USER, password: str = PASSWORD) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}

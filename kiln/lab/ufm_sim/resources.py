"""The fabric model as UFM's REST objects: systems, ports, links, unhealthy ports.

Field names are those of the reference (shared/specs/ufm-rest-api.md §2.3, §3.2, §4.1,
§4.2). Values UFM would learn from devices the lab does not have (switch temperatures,
modules, CPU inventory) are the "unknown" values the reference gives ("N/A", 0, "any", []).
"""

from __future__ import annotations

import time
from typing import Any

from .fabric import SUPPORTED_SPEEDS, SUPPORTED_WIDTHS, Fabric, Port, System

PORT_CAPABILITIES = ["reset", "healthy_operations", "disable", "get_cables_info"]
SWITCH_CAPABILITIES = ["ssh", "sysinfo", "reboot", "sw_upgrade"]
# What a fault-downed port is marked unhealthy for: the SM gets no answer from it.
FAULT_CONDITION = "UNRESPONSIVE"


def port_severity(port: Port) -> str:
    return "Warning" if not port.active or port.degraded else "Info"


def port_json(port: Port) -> dict[str, Any]:
    speed, width = port.speed_width
    peer = port.peer
    host = port.system.kind == "host"
    return {
        "name": port.name,
        "guid": port.guid,
        "systemID": port.system.guid,
        "system_name": port.system.system_name,
        "node_description": port.node_description,
        "description": "Computer IB Port" if host else "Switch IB Port",
        "number": port.number,
        "external_number": port.number,
        "dname": port.dname,
        "module": "N/A",
        "path": port.path,
        "lid": port.lid,
        "mtu": 4096,
        "tier": port.system.tier,
        "mirror": "disable",
        "physical_state": port.physical_state,
        "logical_state": port.logical_state,
        "active_speed": speed,
        "active_width": width,
        "enabled_speed": list(SUPPORTED_SPEEDS),
        "supported_speed": list(SUPPORTED_SPEEDS),
        "enabled_width": list(SUPPORTED_WIDTHS),
        "supported_width": list(SUPPORTED_WIDTHS),
        "severity": port_severity(port),
        "high_ber_severity": "N/A",
        "capabilities": list(PORT_CAPABILITIES),
        "peer": peer.name if peer else "N/A",
        "peer_guid": peer.guid if peer else "N/A",
        "peer_node_guid": peer.system.guid if peer else "N/A",
        "peer_node_name": peer.system.system_name if peer else "N/A",
        "peer_node_description": peer.node_description if peer else "N/A",
        "peer_port_dname": peer.dname if peer else "N/A",
        "peer_lid": peer.lid if peer else 0,
    }


def system_json(system: System, detailed_ports: bool = False) -> dict[str, Any]:
    alarmed = [p for p in system.ports if port_severity(p) != "Info"]
    host = system.kind == "host"
    return {
        "name": system.guid,
        "guid": system.guid,
        "system_guid": system.guid,
        "system_name": system.system_name,
        "type": system.kind,
        "description": system.description,
        "model": system.model,
        "vendor": "Mellanox",
        "ip": system.ip,
        "is_manual_ip": False,
        "technology": "NDR",
        "state": "active",
        "severity": "Warning" if alarmed else "Info",
        "total_alarms": len(alarmed),
        "role": system.role,
        "sm_mode": "noSM",
        "server_operation_mode": "Compute_Server" if host else "Switch",
        "fw_version": system.fw_version,
        "sw_version": "N/A",
        "psid": system.psid,
        "temperature": "N/A",
        "capabilities": [] if host else list(SWITCH_CAPABILITIES),
        "groups": ["Alarmed_Devices"] if alarmed else [],
        "ports": [port_json(p) if detailed_ports else p.name for p in system.ports],
        "modules": [],
        "cpus_number": 0,
        "cpu_speed": 0,
        "cpu_type": "any",
        "ram": 0,
        "has_ufm_agent": False,
        "is_managed": True,
        "mirroring_template": False,
        "script": "N/A",
        "url": "",
    }


def links_json(fabric: Fabric, system: System | None = None) -> list[dict[str, Any]]:
    """Every link that is up, once, from its host (or lower-tier) end; or those of `system`."""
    links = []
    for port in fabric.ports():
        peer = port.peer
        if peer is None or not port.active or port.system.tier > peer.system.tier:
            continue
        if system is not None and system not in (port.system, peer.system):
            continue
        _, width = port.speed_width
        links.append({
            "name": f"{port.name}:{peer.name}",
            "source_guid": port.guid,
            "source_port": port.number,
            "source_port_dname": port.dname,
            "source_port_name": port.name,
            "source_port_node_description": port.node_description,
            "destination_guid": peer.guid,
            "destination_port": peer.number,
            "destination_port_dname": peer.dname,
            "destination_port_name": peer.name,
            "destination_port_node_description": peer.node_description,
            "width": width,
            "severity": port_severity(port),
            "capabilities": ["collect_system_dump"],
        })
    return links


def status_time(epoch: float | None) -> str:
    """StatusTime as the Unhealthy Ports samples write it: "Wed Apr 29 00:05:32 2020"."""
    return time.ctime(epoch if epoch is not None else time.time())


def unhealthy_json(
    port: Port, condition: str, state: str, since: float | None, single: bool = False
) -> dict[str, Any]:
    """One unhealthy port: the list form, or the single-port form of `.../<port_name>`."""
    peer = port.peer
    node = port.system.system_name
    entry: dict[str, Any] = {
        "UnhealthyNode": node,
        "UnhealthyPort": f"{node}/{port.dname}",
        "UnhealthyGUID": port.guid,
        "UnhealthyPortNumber": port.number,
        "UnhealthyPortDname": port.dname,
        "PeerNode": peer.system.system_name if peer else "N/A",
        "PeerPort": f"{peer.system.system_name}/{peer.number}" if peer else "N/A",
        "PeerGUID": peer.guid if peer else "N/A",
        "PeerLID": str(peer.lid) if peer else "N/A",
        "PeerPortNumber": peer.number if peer else 0,
        "PeerPortDname": peer.dname if peer else "N/A",
        "Condition": condition,
        "State": state,
        "StatusTime": status_time(since),
    }
    if single:
        entry.update({
            "UnhealthyNode": port.node_description,
            "UnhealthyPort": str(port.number),
            "PeerPort": f"{peer.system.system_name} / {peer.number}" if peer else "N/A",
            "Condition": [condition],
            "UnhealthyNodeType": port.system.kind,
            "PeerNodeType": peer.system.kind if peer else "N/A",
            "UnhealthyPortNodeDesc": port.node_description,
            "UnhealthyPortPeerNodeDesc": peer.node_description if peer else "N/A",
        })
    return entry

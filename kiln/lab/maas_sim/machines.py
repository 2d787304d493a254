"""The MAAS simulator's records (machines, tags) and how MAAS renders them as JSON.

A `Machine` holds what the simulator must remember about a lab node; `machine_json` turns it
into the object MAAS 3.6's API returns: the fields of `DISPLAYED_MACHINE_FIELDS`
(maasserver/api/machines.py), in MAAS's types (`status` a number, `memory` MiB, `storage`
MB, `owner` a user name or null, `hwe_kernel` null until set, `interface_set` objects with
MAAS's interface fields). Where the lab does not model something MAAS reports (block
devices, NUMA layout, test results) the field is there with what MAAS shows for a machine
that has none.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from kiln.lab.maas_sim.status import (
    SCRIPT_NONE,
    SCRIPT_STATUS_NAMES,
    NodeStatus,
    status_name,
)

API_ROOT = "/MAAS/api/2.0/"
API_USER = "admin"  # the MAAS user the lab's API key belongs to
DOMAIN = "maas"
ARCHITECTURE = "amd64/generic"

# The lab's management network as MAAS models it: one fabric, its untagged VLAN, one subnet.
_VLAN = {
    "vid": 0,
    "mtu": 1500,
    "dhcp_on": True,
    "external_dhcp": None,
    "relay_vlan": None,
    "fabric": "fabric-0",
    "primary_rack": None,
    "name": "untagged",
    "id": 5001,
    "space": "undefined",
    "secondary_rack": None,
    "fabric_id": 0,
    "resource_uri": f"{API_ROOT}vlans/5001/",
}
_SUBNET = {
    "name": "10.231.0.0/24",
    "description": "",
    "vlan": _VLAN,
    "cidr": "10.231.0.0/24",
    "rdns_mode": 2,
    "gateway_ip": "10.231.0.1",
    "dns_servers": [],
    "allow_dns": True,
    "allow_proxy": True,
    "active_discovery": False,
    "managed": True,
    "disabled_boot_architectures": [],
    "id": 1,
    "space": "undefined",
    "resource_uri": f"{API_ROOT}subnets/1/",
}
_ZONE = {"name": "default", "description": "", "id": 1, "resource_uri": f"{API_ROOT}zones/default/"}
_POOL = {
    "name": "default",
    "description": "Default pool",
    "id": 0,
    "resource_uri": f"{API_ROOT}resourcepool/0/",
}
_DOMAIN = {
    "authoritative": True,
    "ttl": None,
    "is_default": True,
    "name": DOMAIN,
    "resource_record_count": 0,
    "id": 0,
    "resource_uri": f"{API_ROOT}domains/0/",
}
_HARDWARE_INFO_KEYS = (
    "system_vendor", "system_product", "system_family", "system_version", "system_sku",
    "system_serial", "cpu_model", "mainboard_vendor", "mainboard_product", "mainboard_serial",
    "mainboard_version", "mainboard_firmware_vendor", "mainboard_firmware_date",
    "mainboard_firmware_version", "chassis_vendor", "chassis_type", "chassis_serial",
    "chassis_version",
)
_TEST_STATUS_FIELDS = ("testing", "cpu_test", "memory_test", "network_test", "storage_test",
                       "other_test", "interface_test")

# MAAS's z-number digits: system ids are six of them (provisioningserver/utils/znums.py).
_ZCHARS = "34678abcdefghkmnpqrstwxy"


def system_id_for(hostname: str, taken: set[str]) -> str:
    """A MAAS-shaped system id, stable for a hostname so a rebuilt lab keeps its ids."""
    for attempt in range(1000):
        digest = hashlib.sha256(f"kiln-lab-maas:{hostname}:{attempt}".encode()).digest()
        number = 24**5 + int.from_bytes(digest[:8], "big") % (24**6 - 24**5)
        digits = []
        while number:
            number, rest = divmod(number, 24)
            digits.append(_ZCHARS[rest])
        system_id = "".join(reversed(digits))
        if system_id not in taken:
            return system_id
    raise RuntimeError(f"no free system id for {hostname}")


@dataclass
class Machine:
    """What the simulator remembers of one machine (persisted in `<lab>/maas/machines.json`).

    Power credentials are not here: the BMC password is read from the lab's secrets file
    when MAAS acts, so it is never written to the simulator's state or shown by the API.
    """

    id: int
    system_id: str
    hostname: str
    address: str  # the address the lab gives the node; its IP once MAAS deploys it
    power_type: str  # "redfish" | "ipmi"
    power_address: str
    power_port: int
    boot_mac: str
    status: int = NodeStatus.NEW
    previous_status: int | None = None
    status_message: str | None = None
    status_action: str = ""
    status_expires: float | None = None  # deadline of a monitored status (epoch seconds)
    error_description: str = ""
    owner: str | None = None
    agent_name: str = ""
    osystem: str = ""
    distro_series: str = ""
    hwe_kernel: str | None = None
    user_data: str | None = None  # as the deploy request gave it
    netboot: bool = True
    power_state: str = "unknown"  # "on" | "off" | "unknown" | "error"
    architecture: str = ARCHITECTURE
    cpu_count: int = 0
    memory: int = 0  # MiB
    hardware: dict[str, Any] = field(default_factory=dict)  # the commissioning inventory
    commissioning_status: int = SCRIPT_NONE
    commissioning_result_id: int | None = None
    installation_result_id: int | None = None

    @property
    def node_status(self) -> NodeStatus:
        return NodeStatus(self.status)

    @property
    def status_name(self) -> str:
        return status_name(self.status)

    def interfaces(self) -> list[dict[str, Any]]:
        """The NICs MAAS knows: the enlisted boot MAC until commissioning names them."""
        found = self.hardware.get("interfaces")
        if found:
            return [{"name": i["name"], "mac_address": i["mac_address"].lower()} for i in found]
        # MAAS names an interface it was given only a MAC for "eth0".
        return [{"name": "eth0", "mac_address": self.boot_mac.lower()}]


def machine_from_dict(document: dict[str, Any], source: str) -> Machine:
    known = {f.name for f in fields(Machine)}
    unknown = set(document) - known
    if unknown:
        raise ValueError(f"{source}: machine {document.get('hostname')!r}: unknown fields "
                         f"{sorted(unknown)}")
    return Machine(**document)


def machine_to_dict(machine: Machine) -> dict[str, Any]:
    return asdict(machine)


@dataclass
class Tag:
    name: str
    comment: str = ""
    definition: str = ""
    kernel_opts: str = ""
    system_ids: list[str] = field(default_factory=list)


def tag_json(tag: Tag) -> dict[str, Any]:
    return {
        "name": tag.name,
        "definition": tag.definition,
        "comment": tag.comment,
        "kernel_opts": tag.kernel_opts,
        "resource_uri": f"{API_ROOT}tags/{tag.name}/",
    }


def _has_address(machine: Machine) -> bool:
    # MAAS claims the machine's auto IP when deployment starts and frees it at release.
    return machine.status in (
        NodeStatus.DEPLOYING, NodeStatus.DEPLOYED, NodeStatus.FAILED_DEPLOYMENT
    )


def _interface_json(machine: Machine, index: int, nic: dict[str, Any]) -> dict[str, Any]:
    interface_id = machine.id * 10 + index
    links: list[dict[str, Any]] = []
    commissioned = bool(machine.hardware)
    if index == 0 and commissioned:
        link: dict[str, Any] = {"id": interface_id, "mode": "auto", "subnet": _SUBNET}
        if _has_address(machine):
            link["ip_address"] = machine.address
        links.append(link)
    return {
        "system_id": machine.system_id,
        "id": interface_id,
        "name": nic["name"],
        "type": "physical",
        "vlan": _VLAN,
        "mac_address": nic["mac_address"],
        "parents": [],
        "children": [],
        "tags": [],
        "enabled": True,
        "links": links,
        "params": "",
        "discovered": None,
        "effective_mtu": 1500,
        "vendor": nic.get("vendor"),
        "product": nic.get("product"),
        "firmware_version": nic.get("firmware_version"),
        "link_connected": True,
        "interface_speed": 100000 if commissioned else 0,
        "link_speed": 100000 if commissioned else 0,
        "numa_node": 0,
        "sriov_max_vf": 0,
        "resource_uri": f"{API_ROOT}nodes/{machine.system_id}/interfaces/{interface_id}/",
    }


def _hardware_info(machine: Machine) -> dict[str, str]:
    info = dict.fromkeys(_HARDWARE_INFO_KEYS, "Unknown")
    system = machine.hardware.get("system") or {}
    if system:
        info["system_vendor"] = system.get("manufacturer", "Unknown")
        info["system_product"] = system.get("product", "Unknown")
        info["system_serial"] = system.get("serial", "Unknown")
        info["mainboard_vendor"] = system.get("manufacturer", "Unknown")
        info["mainboard_product"] = system.get("board", "Unknown")
    return info


def machine_json(machine: Machine, tags: list[Tag]) -> dict[str, Any]:
    """The machine as MAAS 3.6's API renders it (DISPLAYED_MACHINE_FIELDS)."""
    nics = [_interface_json(machine, i, nic) for i, nic in enumerate(machine.interfaces())]
    boot_interface = next(
        (n for n in nics if n["mac_address"] == machine.boot_mac.lower()), nics[0]
    )
    document: dict[str, Any] = {
        "system_id": machine.system_id,
        "hostname": machine.hostname,
        "description": "",
        "hardware_uuid": machine.hardware.get("system", {}).get("uuid"),
        "domain": _DOMAIN,
        "fqdn": f"{machine.hostname}.{DOMAIN}",
        "owner": machine.owner,
        "owner_data": {},
        "locked": False,
        "cache_sets": [],
        "bcaches": [],
        "bios_boot_method": "uefi" if machine.hardware else None,
        "boot_interface": boot_interface,
        "architecture": machine.architecture,
        "min_hwe_kernel": "",
        "hwe_kernel": machine.hwe_kernel,
        "cpu_count": machine.cpu_count,
        "cpu_speed": 0,
        "memory": machine.memory,
        "swap_size": None,
        "storage": 0.0,
        "status": machine.status,
        "osystem": machine.osystem,
        "distro_series": machine.distro_series,
        "ephemeral_deploy": False,
        "error_description": machine.error_description,
        "netboot": machine.netboot,
        "power_type": machine.power_type,
        "power_state": machine.power_state,
        "tag_names": sorted(t.name for t in tags if machine.system_id in t.system_ids),
        "address_ttl": None,
        "ip_addresses": [machine.address] if _has_address(machine) else [],
        "interface_set": nics,
        "zone": _ZONE,
        "pool": _POOL,
        "disable_ipv4": False,
        "boot_disk": None,
        "blockdevice_set": [],
        "physicalblockdevice_set": [],
        "virtualblockdevice_set": [],
        "volume_groups": [],
        "raids": [],
        "status_action": machine.status_action,
        "status_message": machine.status_message,
        "status_name": machine.status_name,
        "node_type": 0,
        "node_type_name": "Machine",
        "special_filesystems": [],
        "parent": None,
        "pod": None,
        "default_gateways": {
            "ipv4": {"gateway_ip": _SUBNET["gateway_ip"] if _has_address(machine) else None,
                     "link_id": None},
            "ipv6": {"gateway_ip": None, "link_id": None},
        },
        "current_commissioning_result_id": machine.commissioning_result_id,
        "current_testing_result_id": None,
        "current_installation_result_id": machine.installation_result_id,
        "commissioning_status": machine.commissioning_status,
        "commissioning_status_name": SCRIPT_STATUS_NAMES[machine.commissioning_status],
        "hardware_info": _hardware_info(machine),
        "numanode_set": [
            {"index": 0, "cores": list(range(machine.cpu_count)), "memory": machine.memory,
             "hugepages_set": []}
        ],
        "virtualmachine_id": None,
        "workload_annotations": {},
        "last_sync": None,
        "sync_interval": None,
        "next_sync": None,
        "enable_hw_sync": False,
        "enable_kernel_crash_dump": False,
        "resource_uri": f"{API_ROOT}machines/{machine.system_id}/",
    }
    for prefix in _TEST_STATUS_FIELDS:
        document[f"{prefix}_status"] = SCRIPT_NONE
        document[f"{prefix}_status_name"] = SCRIPT_STATUS_NAMES[SCRIPT_NONE]
    return document


def read_profile(lab: Path, node: str) -> dict[str, Any]:
    """The node's hardware profile (lab layout: `hw/<name>/profile.json`)."""
    path = Path(lab) / "hw" / node / "profile.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path}: no hardware profile for {node}; MAAS needs its boot MAC to enlist it"
        ) from None

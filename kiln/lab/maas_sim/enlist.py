"""Enlistment: the machines MAAS knows when the lab comes up.

A new rack's machines are known to MAAS as New and powered off, with what an operator gives
MAAS when adding a machine: its boot MAC (the management NIC of the node's hardware profile)
and its BMC (power type, address, port from state.json; the password stays in the secrets
file). `deployed=True` is a lab brought up already imaged: Deployed with the lab image, owned
by the API user, with the inventory its commissioning would have found.
"""

from __future__ import annotations

from pathlib import Path

from kiln.core.paths import FIRMWARE_DIR
from kiln.lab import netboot
from kiln.lab.maas_sim.lifecycle import Image
from kiln.lab.maas_sim.machines import API_USER, Machine, read_profile, system_id_for
from kiln.lab.maas_sim.status import SCRIPT_PASSED, NodeStatus
from kiln.lab.state import LabState

LAB_MANIFEST = FIRMWARE_DIR / "lab.yaml"


def lab_image(manifest: Path = LAB_MANIFEST) -> Image:
    """The one image the simulated MAAS offers: what the lab SKU's manifest pins."""
    from kiln.core.manifest import load_manifest

    pinned = load_manifest(manifest).os
    return Image(pinned.osystem, pinned.distro_series, pinned.hwe_kernel)


def enlist(lab: Path, state: LabState, deployed: bool, image: Image) -> list[Machine]:
    machines: list[Machine] = []
    taken: set[str] = set()
    for node in sorted(state.nodes, key=lambda n: n.index):
        bmc = node.bmc or {}
        if bmc.get("protocol") not in ("redfish", "ipmi") or not bmc.get("address"):
            raise ValueError(f"{Path(lab) / 'state.json'}: node {node.name}: no BMC "
                             f"(protocol redfish|ipmi and address) to enlist it with")
        profile = read_profile(lab, node.name)
        system_id = system_id_for(node.name, taken)
        taken.add(system_id)
        machine = Machine(
            id=node.index,
            system_id=system_id,
            hostname=node.name,
            address=node.address,
            power_type=bmc["protocol"],
            power_address=bmc["address"],
            power_port=int(bmc.get("port") or (443 if bmc["protocol"] == "redfish" else 623)),
            boot_mac=profile["mgmt_nic"]["mac"],
            status=NodeStatus.NEW,
            status_message="New",
            power_state="off",
        )
        if deployed:
            _as_deployed(machine, profile, image)
        machines.append(machine)
    return machines


def _as_deployed(machine: Machine, profile: dict, image: Image) -> None:
    hardware = netboot.hardware_summary(profile)
    machine.hardware = hardware
    machine.cpu_count = int(hardware["cpu_count"])
    machine.memory = int(hardware["memory"])
    machine.architecture = hardware.get("architecture") or machine.architecture
    machine.commissioning_status = SCRIPT_PASSED
    machine.commissioning_result_id = 1
    machine.installation_result_id = 1
    machine.status = NodeStatus.DEPLOYED
    machine.status_message = "Deployed"
    machine.owner = API_USER
    machine.osystem = image.osystem
    machine.distro_series = image.distro_series
    machine.hwe_kernel = image.hwe_kernel
    machine.netboot = False
    machine.power_state = "on"
    machine.previous_status = NodeStatus.DEPLOYING

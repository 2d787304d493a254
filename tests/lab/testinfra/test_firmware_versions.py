"""Every firmware component runs the manifest's version: read from the BMC over Redfish and on
the node with mlxfwmanager and nvidia-smi, never from kiln's own record.

The components are found by the manifest's own recognition rules (firmware.<key>.match):
a Redfish FirmwareInventory member whose Id/Name match the patterns, a ConnectX whose PSID
is the manifest's, a GPU field of `nvidia-smi -q`. Redfish is read here with plain HTTPS
(curl, basic auth with the node's BMC credentials), not through kiln's BMC client.
"""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

import pytest

from kiln.core.secrets import lookup
from kiln.roles.firmware.parsers import parse_mlxfwmanager
from kiln.roles.nvidia.parsers import parse_nvidia_smi_q

INVENTORY = "/redfish/v1/UpdateService/FirmwareInventory"


def _runs(pinned: str, reported: str | None) -> bool:
    # A BMC may append a build stamp after a space ("1.66 Dec 13 2024").
    return reported is not None and (reported.strip() == pinned
                                     or reported.strip().startswith(pinned + " "))


def _redfish_get(base: str, path: str, credentials: str, ca: str | bool) -> dict[str, Any]:
    # curl, not requests: this suite's conftest loads pyinfra, whose gevent patching of ssl
    # breaks requests' TLS in this process. The credentials go on curl's stdin, not argv.
    args = ["curl", "-sS", "--fail", "--max-time", "30", "-K", "-"]
    if ca is False:
        args.append("--insecure")  # the inventory says verify_tls: false (kiln warns of it)
    elif isinstance(ca, str):
        args += ["--cacert", ca]
    result = subprocess.run([*args, base + path], input=f'user = "{credentials}"\n',
                            capture_output=True, text=True)
    assert result.returncode == 0, f"GET {base}{path}: {result.stderr.strip()}"
    return json.loads(result.stdout)


def _redfish_inventory(node) -> list[dict[str, Any]]:
    bmc = node.data.get("kiln_bmc")
    if not bmc or bmc.get("protocol") != "redfish":
        pytest.skip(f"{node.name}: the inventory names no Redfish BMC")
    secret = lookup(bmc.get("credentials") or "bmc", ("username", "password"),
                    secrets_file=node.data.get("kiln_secrets_file"),
                    env_prefix=node.data.get("kiln_secrets_env_prefix") or "KILN_")
    credentials = f"{secret['username'].reveal()}:{secret['password'].reveal()}"
    base = f"https://{bmc['address']}:{bmc.get('port') or 443}"
    ca = (bmc.get("ca_bundle") or True) if bmc.get("verify_tls", True) else False
    collection = _redfish_get(base, INVENTORY, credentials, ca)
    return [_redfish_get(base, link["@odata.id"], credentials, ca)
            for link in collection["Members"]]


def _components(node, rule: str) -> dict[str, Any]:
    return {key: component for key, component in node.manifest.firmware.items()
            if getattr(component.match, rule) is not None}


@pytest.mark.gpu_node
def test_redfish_firmware_inventory_runs_the_pinned_versions(node):
    components = _components(node, "redfish")
    members = _redfish_inventory(node)
    wrong = []
    for key, component in components.items():
        rule = component.match.redfish
        found = [m for m in members
                 if (rule.id_pattern is None or re.search(rule.id_pattern, m.get("Id", "")))
                 and (rule.name_pattern is None or re.search(rule.name_pattern,
                                                             m.get("Name", "")))]
        if not found:
            wrong.append(f"{key}: no FirmwareInventory member matches {rule}")
        wrong += [f"{key}: {m['Id']} ({m.get('Name')}) runs {m.get('Version')}, pinned "
                  f"{component.version}" for m in found
                  if not _runs(component.version, m.get("Version"))]
    assert wrong == []


@pytest.mark.gpu_node
def test_connectx_firmware_is_the_pinned_version(node):
    components = _components(node, "psid")
    devices = parse_mlxfwmanager(node.read("mlxfwmanager --query"))
    wrong = []
    for key, component in components.items():
        cards = [d for d in devices if d["psid"] == component.match.psid]
        if len(cards) < node.manifest.topology.hca.count:
            wrong.append(f"{key}: {len(cards)} cards with PSID {component.match.psid}, the "
                         f"manifest's topology has {node.manifest.topology.hca.count}")
        wrong += [f"{key}: {d['pci_device_name']} runs FW {d['versions']['fw']['current']}, "
                  f"pinned {component.version}" for d in cards
                  if not _runs(component.version, d["versions"]["fw"]["current"])]
    assert wrong == []


@pytest.mark.gpu_node
def test_gpu_firmware_is_the_pinned_version(node):
    components = _components(node, "nvidia_smi_field")
    smi = parse_nvidia_smi_q(node.read("nvidia-smi -q"))
    assert len(smi["gpus"]) == node.manifest.topology.gpu.count
    wrong = []
    for key, component in components.items():
        for gpu in smi["gpus"]:
            value: Any = gpu["raw"]
            for part in component.match.nvidia_smi_field.split("/"):
                value = value.get(part.strip()) if isinstance(value, dict) else None
            if not _runs(component.version, value if isinstance(value, str) else None):
                wrong.append(f"{key}: GPU {gpu['pci_bus_id']} "
                             f"{component.match.nvidia_smi_field} is {value}, pinned "
                             f"{component.version}")
    assert wrong == []

"""kiln's MAAS client in the running lab: release, commission and deploy a lab node.

The client reaches the MAAS simulator at the lab's endpoint with the lab's API key, both
taken from the lab inventory's host data, exactly as a deploy would; the simulator drives
the node's real BMC (sushy-tools Redfish, ipmi_sim IPMI) and the lab's PXE side. The node
(the last GPU node, which other lab tests leave alone) goes Deployed → Ready (erased) →
commissioned → Deployed with the lab SKU's image, and comes back reachable with kiln's key
and a fresh root filesystem. Every request the client sent is recorded and validated
against MAAS's OpenAPI document with openapi-core, as sent and as the simulator received it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kiln.core.manifest import load_manifest
from kiln.lab.inventory import lab_host_data
from kiln.lab.state import LabState
from kiln.roles.maas import (
    MAASAuthError,
    MAASClient,
    Status,
    Waiter,
    client_for_host,
    cloud_config,
    commissioned,
    deployed,
    identity_for_host,
    lab_vendor_mirror,
    released,
)
from kiln.roles.maas.apicheck import RequestRecorder, SpecValidator
from kiln.roles.maas.userdata import public_key_of

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "tests/fixtures/specs/maas-api-2.0-openapi.yaml"
MARKER = "/var/tmp/kiln-maas-client-marker"


def _requests_log(state: LabState) -> Path:
    return Path(state.lab_dir) / "maas" / "requests.jsonl"


def _log_length(state: LabState) -> int:
    path = _requests_log(state)
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_release_commission_deploy_a_lab_node(lab, labtools):
    from kiln.lab.maas_sim.openapi_check import check_requests, read_requests

    node = next(n for n in reversed(lab.nodes) if n.role == "gpu")
    data = lab_host_data(lab, node)
    recorder = RequestRecorder()
    client = client_for_host(data, on_request=recorder)
    identity = identity_for_host(data)
    progress: list[str] = []
    waiter = Waiter(poll_interval=1.0, progress=progress.append)
    image = load_manifest(ROOT / "kiln" / "firmware" / "lab.yaml").os
    key = (Path(lab.lab_dir) / "vendor" / "keys" / "lab-archive.asc").read_text()
    user_data = cloud_config([public_key_of(lab.ssh_key)],
                             lab_vendor_mirror(lab.endpoints["vendor_repo"], key))
    log_start = _log_length(lab)

    assert client.version()["version"]
    before = client.find(identity)
    assert before.status == Status.DEPLOYED  # the lab fixture brings nodes up deployed
    labtools.ssh(lab, node.name, f"echo before-reprovision > {MARKER}")

    # A deployed node with the pinned image is left alone: nothing is posted.
    unchanged = deployed(client, identity, image, user_data, waiter=waiter)
    assert not unchanged.changed
    assert all(sent.method == "GET" for sent in recorder.requests)

    gone = released(client, identity, erase=True, timeout=300, waiter=waiter)
    assert gone.machine.status == Status.READY
    assert client.query_power_state(gone.machine.system_id) == "off"
    again = commissioned(client, identity, recommission=True, timeout=300, waiter=waiter)
    assert again.changed and again.machine.status == Status.READY
    done = deployed(client, identity, image, user_data, timeout=600, waiter=waiter)
    assert done.changed and done.machine.status == Status.DEPLOYED
    assert (done.machine.osystem, done.machine.distro_series, done.machine.hwe_kernel) == (
        image.osystem, image.distro_series, image.hwe_kernel)

    # The node is back, reachable with kiln's key, on a fresh root filesystem.
    assert labtools.ssh(lab, node.name, f"test -e {MARKER} && echo kept || echo gone",
                        check=False).strip() == "gone"
    on_disk = json.loads(labtools.ssh(lab, node.name, "cat /etc/kiln-lab/image.json"))
    assert {k: on_disk[k] for k in ("osystem", "distro_series", "hwe_kernel")} == {
        "osystem": image.osystem, "distro_series": image.distro_series,
        "hwe_kernel": image.hwe_kernel}

    print("\n".join(progress))  # shown with -s: what a person watching the run sees
    for step in ("Deployed → Disk erasing", "Ready → Commissioning", "Commissioning → Ready",
                 "Ready → Deploying", "Deploying → Deployed"):
        assert any(line.startswith(f"{node.name}: {step} (") for line in progress), progress

    # Every request: as kiln sent it, and as the simulator received it.
    assert SpecValidator(SPEC).check_all(recorder.requests) == []
    received = read_requests(_requests_log(lab))[log_start:]
    assert len(received) == len(recorder.requests)
    assert check_requests(received) == []
    assert {r.status for r in received} <= {200, 204}


def test_ipmi_node_power_state_and_a_wrong_key(lab):
    node = next(n for n in lab.nodes if n.bmc.get("protocol") == "ipmi")
    data = lab_host_data(lab, node)
    client = client_for_host(data)
    machine = client.find(identity_for_host(data))
    assert client.query_power_state(machine.system_id) == "on"

    log_start = _log_length(lab)
    wrong = MAASClient(lab.endpoints["maas"], "aaaaaaaaaaaaaaaaaa:bbbbbbbbbbbbbbbbbb:" + "c" * 32)
    with pytest.raises(MAASAuthError, match="MAAS rejected the API key"):
        wrong.machine(machine.system_id)
    assert _log_length(lab) - log_start == 1  # one request, no retry storm

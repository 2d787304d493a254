"""The simulator against MAAS's own OpenAPI document (tests/fixtures/specs) and MAAS's fields.

- Every request the simulator accepted in a session exercising all it implements validates
  against the document with openapi-core (the simulator records them; openapi_check.py).
- Its tables of operations and list filters are the document's.
- Its responses: where the document lists the status for the operation, they validate; a
  machine has exactly the fields MAAS 3.6 shows (DISPLAYED_MACHINE_FIELDS), in MAAS's types.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_maas_sim_harness import SimHarness, build

from kiln.lab.maas_sim.api import SPEC_LIST_FILTERS, SPEC_SIGNATURES
from kiln.lab.maas_sim.openapi_check import (
    SPEC,
    RecordedRequest,
    SpecViolation,
    check_request,
    check_requests,
    check_response,
    documented_statuses,
    read_requests,
)

# maasserver/api/machines.py DISPLAYED_MACHINE_FIELDS in MAAS 3.6 (numanode_set a nested
# field), plus the resource_uri piston adds to every object.
MAAS_36_MACHINE_FIELDS = {
    "system_id", "hostname", "description", "hardware_uuid", "domain", "fqdn", "owner",
    "owner_data", "locked", "cache_sets", "bcaches", "bios_boot_method", "boot_interface",
    "architecture", "min_hwe_kernel", "hwe_kernel", "cpu_count", "cpu_speed", "memory",
    "swap_size", "storage", "status", "osystem", "distro_series", "ephemeral_deploy",
    "error_description", "netboot", "power_type", "power_state", "tag_names", "address_ttl",
    "ip_addresses", "interface_set", "zone", "pool", "disable_ipv4", "boot_disk",
    "blockdevice_set", "physicalblockdevice_set", "virtualblockdevice_set", "volume_groups",
    "raids", "status_action", "status_message", "status_name", "node_type", "node_type_name",
    "special_filesystems", "parent", "pod", "default_gateways",
    "current_commissioning_result_id", "current_testing_result_id",
    "current_installation_result_id", "commissioning_status", "commissioning_status_name",
    "testing_status", "testing_status_name", "cpu_test_status", "cpu_test_status_name",
    "memory_test_status", "memory_test_status_name", "network_test_status",
    "network_test_status_name", "storage_test_status", "storage_test_status_name",
    "other_test_status", "other_test_status_name", "hardware_info", "interface_test_status",
    "interface_test_status_name", "numanode_set", "virtualmachine_id", "workload_annotations",
    "last_sync", "sync_interval", "next_sync", "enable_hw_sync", "enable_kernel_crash_dump",
    "resource_uri",
}
# maasserver/api/interfaces.py DISPLAYED_INTERFACE_FIELDS, plus resource_uri.
MAAS_INTERFACE_FIELDS = {
    "system_id", "id", "name", "type", "vlan", "mac_address", "parents", "children", "tags",
    "enabled", "links", "params", "discovered", "effective_mtu", "vendor", "product",
    "firmware_version", "link_connected", "interface_speed", "link_speed", "numa_node",
    "sriov_max_vf", "resource_uri",
}


@pytest.fixture(scope="module")
def document() -> dict:
    return yaml.load(SPEC.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def cloud_config() -> str:
    return base64.b64encode(b"#cloud-config\nssh_authorized_keys: [ssh-ed25519 AAAA k@c]\n"
                            ).decode()


def test_operation_table_is_the_documents(document):
    found: dict[str, set] = {}
    names = {"machines/": "machines", "machines/{system_id}/": "machine", "tags/": "tags",
             "tags/{name}/": "tag", "version/": "version"}
    for path, item in document["paths"].items():
        match = re.fullmatch(r"/((?:machines|tags|version)/(?:\{[a-z_]+\}/)?)(?:op-(\w+))?",
                             path)
        if match:
            for method in item:
                if method != "parameters":
                    found.setdefault(names[match[1]], set()).add((method.upper(), match[2]))
    assert {k: set(v) for k, v in SPEC_SIGNATURES.items()} == found


def test_list_filter_table_is_the_documents(document):
    parameters = document["paths"]["/machines/"]["get"]["parameters"]
    assert SPEC_LIST_FILTERS == {p["name"] for p in parameters if p["in"] == "query"}


@dataclass
class Session:
    log: Path  # every request the simulator received
    pairs: list[tuple[RecordedRequest, Any]]  # the calls the session made, with answers


def exercise(sim: SimHarness) -> Session:
    """Everything the simulator implements, the way a MAAS client calls it; returns each
    request with the response it got."""
    client = sim.client
    log = sim.lab / "maas" / "requests.jsonl"
    kept: list[tuple[int, object]] = []  # (index of the request in the log, its response)

    def keep(response):
        # The request just made is the log's last line (the waits in between add lines).
        kept.append((len(read_requests(log)) - 1, response))
        return response

    keep(client.http.get("/MAAS/api/2.0/version/"))
    machines = keep(client.get("machines/")).get_json()
    gpu, svc = machines[0]["system_id"], machines[-1]["system_id"]
    keep(client.get("machines/", {"hostname": machines[0]["hostname"], "status": "new"}))
    keep(client.get("machines/", {"id": [gpu, svc]}))
    keep(client.get("machines/", {"mac_address": machines[0]["boot_interface"]["mac_address"]}))
    keep(client.get(f"machines/{gpu}/"))
    keep(client.get(f"machines/{gpu}/", {"op": "query_power_state"}))
    for system_id in (gpu, svc):
        keep(client.post(f"machines/{system_id}/", "commission", enable_ssh="0",
                         skip_bmc_config="1"))
        sim.wait(system_id, "Ready")
    keep(client.post("machines/", "allocate", system_id=svc, agent_name="kiln"))
    keep(client.get("machines/", {"op": "list_allocated"}))
    keep(client.post(f"machines/{gpu}/", "deploy", osystem="debian", distro_series="bookworm",
                     hwe_kernel="ga-12", user_data=cloud_config(), comment="bring-up"))
    keep(client.post(f"machines/{svc}/", "deploy", distro_series="bookworm"))
    for system_id in (gpu, svc):
        sim.wait(system_id, "Deployed")
    keep(client.post(f"machines/{svc}/", "power_off", stop_mode="hard"))
    sim.settle()
    keep(client.post(f"machines/{svc}/", "power_on", comment="back on"))
    keep(client.post(f"machines/{svc}/", "mark_broken", comment="fan"))
    keep(client.post(f"machines/{svc}/", "mark_fixed", comment="fan replaced"))
    keep(client.post(f"machines/{gpu}/", "release", erase="true", quick_erase="true",
                     secure_erase="false", comment="reprovision"))
    sim.wait(gpu, "Ready")
    sim.bmcs[machines[0]["hostname"]].finishes = False
    keep(client.post(f"machines/{gpu}/", "deploy"))
    # A field-less POST as MAAS's CLI and kiln's client send it: an empty multipart form.
    url = f"/MAAS/api/2.0/machines/{gpu}/"
    keep(client.http.post(url, query_string={"op": "abort"}, data=b"--xyz--\r\n",
                          content_type="multipart/form-data; boundary=xyz",
                          headers=client.headers(url, "POST")))
    sim.wait(gpu, "Allocated")
    keep(client.post("tags/", name="kiln-pool", comment="pool"))
    keep(client.get("tags/"))
    keep(client.get("tags/kiln-pool/"))
    keep(client.post("tags/kiln-pool/", "update_nodes", add=gpu))
    keep(client.post("tags/kiln-pool/", "update_nodes", remove=gpu))
    keep(client.get("tags/kiln-pool/", {"op": "machines"}))
    keep(client.delete("tags/kiln-pool/"))
    sim.settle()
    recorded = read_requests(log)
    return Session(log, [(recorded[index], response) for index, response in kept])


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> Session:
    sim = build(tmp_path_factory.mktemp("spec"), gpu=1, service=1)
    return exercise(sim)


def test_every_accepted_request_validates_against_maas_document(session):
    assert all(response.status_code < 300 for _, response in session.pairs)
    log = read_requests(session.log)
    accepted = [r for r in log if r.status is not None and r.status < 300]
    assert len(accepted) == len(log) > len(session.pairs)  # the waits' polls are in too
    assert check_requests(accepted) == []
    operations = {(r.method, dict(r.query).get("op")) for r in accepted}
    assert {("POST", "deploy"), ("POST", "commission"), ("POST", "release"), ("POST", "abort"),
            ("GET", "query_power_state"), ("POST", "update_nodes"), ("GET", "machines"),
            ("POST", "allocate"), ("POST", "mark_broken"), ("POST", None)} <= operations


def test_the_check_refuses_what_the_document_refuses(session):
    deploy = next(r for r, _ in session.pairs if dict(r.query).get("op") == "deploy")
    urlencoded = RecordedRequest(deploy.method, deploy.path, deploy.query,
                                 "application/x-www-form-urlencoded", b"distro_series=bookworm")
    unknown_op = RecordedRequest("POST", deploy.path, [("op", "frobnicate")],
                                 deploy.content_type, deploy.body)
    not_a_boolean = RecordedRequest(
        "POST", deploy.path, [("op", "release")], "multipart/form-data; boundary=b",
        b'--b\r\nContent-Disposition: form-data; name="erase"\r\n\r\nperhaps\r\n--b--\r\n')
    for bad in (urlencoded, unknown_op, not_a_boolean):
        with pytest.raises(SpecViolation):
            check_request(bad)


# Calls MAAS answers with a JSON array (its handlers return querysets, which piston emits
# as lists). MAAS's document types every JSON answer "object"; for these its own description
# reads "A JSON object containing a list of ...": the generator's simplification.
LIST_ANSWERS = {("GET", "/MAAS/api/2.0/machines/", None),
                ("GET", "/MAAS/api/2.0/machines/", "list_allocated"),
                ("GET", "/MAAS/api/2.0/tags/", None)}


def lists(recorded: RecordedRequest) -> bool:
    op = dict(recorded.query).get("op")
    return (recorded.method, recorded.path, op) in LIST_ANSWERS or op == "machines"


def test_responses_match_the_document_where_it_lists_them(session):
    checked = 0
    for recorded, response in session.pairs:
        if lists(recorded):
            assert isinstance(response.get_json(), list), recorded.describe()
            assert all(isinstance(item, dict) for item in response.get_json())
        elif str(response.status_code) in documented_statuses(recorded):
            check_response(recorded, response.status_code, response.content_type,
                           response.get_data())
            checked += 1
    assert checked >= 10


def test_refused_requests_answer_with_a_status_the_document_lists(tmp_path):
    sim = build(tmp_path, gpu=1, service=0)
    system_id = sim.client.get("machines/").get_json()[0]["system_id"]
    sim.client.post(f"machines/{system_id}/", "release")  # 409: New is not releasable
    sim.client.get("machines/nosuch/")  # 404
    sim.client.post("tags/nosuch/", "update_nodes", add=system_id)  # 404
    for recorded in read_requests(sim.lab / "maas" / "requests.jsonl")[1:]:
        assert str(recorded.status) in documented_statuses(recorded), recorded.describe()


def test_a_machine_has_maas_fields_in_maas_types(session):
    machine = next(response.get_json() for recorded, response in session.pairs
                   if recorded.path.endswith("/") and recorded.method == "GET"
                   and recorded.path.count("/") == 6 and not recorded.query)
    assert set(machine) == MAAS_36_MACHINE_FIELDS
    assert set(machine["boot_interface"]) == MAAS_INTERFACE_FIELDS
    for nic in machine["interface_set"]:
        assert set(nic) == MAAS_INTERFACE_FIELDS
    types = {"system_id": str, "hostname": str, "status": int, "status_name": str,
             "cpu_count": int, "memory": int, "storage": float, "netboot": bool,
             "tag_names": list, "ip_addresses": list, "interface_set": list,
             "power_state": str, "power_type": str, "locked": bool, "domain": dict,
             "zone": dict, "pool": dict, "hardware_info": dict, "node_type": int}
    for name, kind in types.items():
        assert isinstance(machine[name], kind), (name, machine[name])
    assert machine["hwe_kernel"] is None and machine["owner"] is None  # New: unset is null

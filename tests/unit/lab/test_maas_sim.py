"""The MAAS simulator's API and lifecycle, driven the way kiln's MAAS client drives MAAS.

Statuses, status codes and texts asserted here are MAAS 3.6's (maasserver sources); the
harness (test_maas_sim_harness.py) stands in for the BMCs and the lab's PXE side.
"""

from __future__ import annotations

import base64
import time
from dataclasses import replace

import pytest
from test_maas_sim_harness import FAST, SimHarness, build, system_id_of

from kiln.lab import netboot
from kiln.lab.maas_sim.lifecycle import ssh_keys_of, user_data_text


@pytest.fixture
def sim(tmp_path) -> SimHarness:
    harness = build(tmp_path)
    yield harness
    harness.settle()


@pytest.fixture
def deployed_sim(tmp_path) -> SimHarness:
    harness = build(tmp_path, deployed=True)
    yield harness
    harness.settle()


KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKiln+unit+test kiln@controller"


def cloud_config(*keys: str) -> str:
    text = "#cloud-config\nssh_authorized_keys:\n" + "".join(f"  - {k}\n" for k in keys)
    return base64.b64encode(text.encode()).decode()


def commissioned(sim, hostname: str = "gpu-001") -> str:
    system_id = system_id_of(sim, hostname)
    assert sim.client.post(f"machines/{system_id}/", "commission").status_code == 200
    sim.wait(system_id, "Ready")
    return system_id


def deployed(sim, hostname: str = "gpu-001") -> str:
    system_id = commissioned(sim, hostname)
    response = sim.client.post(f"machines/{system_id}/", "deploy", user_data=cloud_config(KEY))
    assert response.status_code == 200, response.get_data(as_text=True)
    sim.wait(system_id, "Deployed")
    return system_id


# -- enlistment and reading ---------------------------------------------------------------


def test_version_is_anonymous_and_maas_shaped(sim):
    response = sim.client.http.get("/MAAS/api/2.0/version/")
    assert response.status_code == 200
    body = response.get_json()
    assert body["version"].startswith("3.")
    assert body["subversion"] == ""
    assert "authenticate-api" in body["capabilities"]


def test_every_node_is_enlisted_new_and_off_with_its_bmc(sim):
    machines = sim.client.get("machines/").get_json()
    assert [m["hostname"] for m in machines] == [n.name for n in sim.state.nodes]
    for machine, node in zip(machines, sim.state.nodes, strict=True):
        assert (machine["status"], machine["status_name"]) == (0, "New")
        assert machine["power_state"] == "off"
        assert machine["power_type"] == node.bmc["protocol"]
        assert machine["owner"] is None and machine["osystem"] == ""
        profile_mac = (sim.lab / "hw" / node.name / "profile.json").read_text()
        assert machine["boot_interface"]["mac_address"] in profile_mac
        assert machine["resource_uri"] == f"/MAAS/api/2.0/machines/{machine['system_id']}/"
        assert machine["fqdn"] == f"{node.name}.maas"
    assert {m["power_type"] for m in machines} == {"redfish", "ipmi"}


def test_no_credential_is_kept_in_the_simulator_state(sim):
    secrets = sim.lab.joinpath("secrets.yaml").read_text()
    bmc_password = [line for line in secrets.splitlines() if "password" in line][0]
    store = sim.lab.joinpath("maas", "store.json").read_text()
    assert bmc_password.split(":", 1)[1].strip() not in store
    assert sim.api_key.split(":")[2] not in store


def test_list_filters(sim):
    machines = sim.client.get("machines/").get_json()
    first, second = machines[0], machines[1]
    by_host = sim.client.get("machines/", {"hostname": first["hostname"]}).get_json()
    assert [m["system_id"] for m in by_host] == [first["system_id"]]
    by_ids = sim.client.get(
        "machines/", {"id": [first["system_id"], second["system_id"]]}
    ).get_json()
    assert [m["system_id"] for m in by_ids] == [first["system_id"], second["system_id"]]
    mac = second["boot_interface"]["mac_address"]
    assert [m["hostname"] for m in sim.client.get("machines/", {"mac_address": mac}).get_json()
            ] == [second["hostname"]]
    assert len(sim.client.get("machines/", {"status": "new"}).get_json()) == len(machines)
    assert sim.client.get("machines/", {"status": "deployed"}).get_json() == []


def test_list_refuses_what_it_cannot_filter_and_what_maas_refuses(sim):
    unimplemented = sim.client.get("machines/", {"arch": "amd64"})
    assert unimplemented.status_code == 501
    assert "arch" in unimplemented.get_data(as_text=True)
    bad_status = sim.client.get("machines/", {"status": "sleepy"})
    assert bad_status.status_code == 400
    assert "sleepy is not one of the available choices" in bad_status.get_json()["status"][0]
    bad_mac = sim.client.get("machines/", {"mac_address": "nope"})
    assert (bad_mac.status_code, bad_mac.get_data(as_text=True)) == (
        400, "Invalid MAC address(es): nope")


def test_unknown_machine_is_404(sim):
    response = sim.client.get("machines/xyz123/")
    assert response.status_code == 404
    assert response.get_data(as_text=True) == "No Machine matches the given query."
    assert sim.client.post("machines/xyz123/", "commission").status_code == 404


def test_unknown_endpoint_is_404(sim):
    response = sim.client.get("nodes-that-are-not/")
    assert response.status_code == 404
    assert response.get_data(as_text=True) == (
        "Unknown API endpoint: /MAAS/api/2.0/nodes-that-are-not/.")


def test_unknown_op_is_maas_unrecognised_signature(sim):
    system_id = system_id_of(sim, "gpu-001")
    response = sim.client.post(f"machines/{system_id}/", "frobnicate")
    assert response.status_code == 400
    assert response.get_data(as_text=True) == "Unrecognised signature: method=POST op=frobnicate"
    # A GET op sent as POST (and the other way round) is not the same signature either.
    wrong_method = sim.client.post(f"machines/{system_id}/", "query_power_state")
    assert wrong_method.get_data(as_text=True) == (
        "Unrecognised signature: method=POST op=query_power_state")
    get_deploy = sim.client.get(f"machines/{system_id}/", {"op": "deploy"})
    assert get_deploy.status_code == 400


def test_a_maas_operation_the_simulator_lacks_says_so(sim):
    system_id = system_id_of(sim, "gpu-001")
    response = sim.client.post(f"machines/{system_id}/", "lock")
    assert response.status_code == 501
    assert "does not implement" in response.get_data(as_text=True)
    assert sim.client.machine(system_id)["locked"] is False


def test_op_as_a_path_segment_is_the_same_operation(sim):
    system_id = system_id_of(sim, "gpu-001")
    url = f"/MAAS/api/2.0/machines/{system_id}/op-commission"
    response = sim.client.http.post(url, data={"comment": "x"},
                                    content_type="multipart/form-data",
                                    headers=sim.client.headers(url, "POST"))
    assert response.status_code == 200
    assert response.get_json()["status_name"] == "Commissioning"


# -- commissioning ------------------------------------------------------------------------


def test_commission_inventories_the_hardware_through_a_pxe_boot(sim):
    system_id = system_id_of(sim, "gpu-001")
    started = sim.client.post(f"machines/{system_id}/", "commission")
    assert started.status_code == 200
    assert (started.get_json()["status"], started.get_json()["status_name"]) == (
        1, "Commissioning")
    machine = sim.wait(system_id, "Ready")
    bmc = sim.bmcs["gpu-001"]
    assert bmc.calls[0] == "on-pxe"  # through the BMC, booting from the network
    assert bmc.requests[0]["action"] == "commission"
    assert bmc.state == "off" and machine["power_state"] == "off"
    profile = netboot.hardware_summary(
        __import__("json").loads((sim.lab / "hw" / "gpu-001" / "profile.json").read_text())
    )
    assert machine["cpu_count"] == profile["cpu_count"]
    assert machine["memory"] == profile["memory"]
    assert machine["interface_set"][0]["name"] == "eno1"
    assert machine["hardware_info"]["system_product"] == profile["system"]["product"]
    assert (machine["commissioning_status"], machine["commissioning_status_name"]) == (
        2, "Passed")
    assert machine["status_message"] == "Ready"


def test_commission_takes_time_and_shows_maas_progress(tmp_path):
    sim = build(tmp_path, timing=replace(FAST, step=0.15, poll=0.01, commission_timeout=10))
    system_id = system_id_of(sim, "gpu-001")
    started = time.monotonic()
    sim.client.post(f"machines/{system_id}/", "commission")
    seen: list[str] = []
    sim.wait(system_id, "Ready", seen=seen)
    assert time.monotonic() - started >= 3 * 0.15
    assert seen[:2] == ["Commissioning", "Performing PXE boot"]
    assert "Gathering information" in seen
    sim.settle()


def test_commission_is_refused_where_maas_refuses_it(deployed_sim):
    system_id = system_id_of(deployed_sim, "gpu-001")
    response = deployed_sim.client.post(f"machines/{system_id}/", "commission")
    assert response.status_code == 400
    assert response.get_json() == {"__all__": [
        "Commission is not available because of the current state of the node."]}


def test_unreachable_bmc_reverts_commissioning_as_maas_does(sim):
    system_id = system_id_of(sim, "gpu-002")
    sim.bmcs["gpu-002"].reachable = False
    sim.client.post(f"machines/{system_id}/", "commission")
    machine = sim.wait(system_id, "New")
    assert machine["power_state"] == "error"
    assert machine["status_message"].startswith("Failed to query node's BMC")
    assert "Aborting COMMISSIONING and reverting to NEW" in machine["status_message"]
    assert "Please check power credentials." in machine["status_message"]
    assert netboot.pending(sim.lab, "gpu-002") is None  # the PXE offer is withdrawn


def test_commission_past_its_deadline_fails(tmp_path):
    sim = build(tmp_path, timing=replace(FAST, step=0.01, poll=0.01, commission_timeout=0.3))
    sim.bmcs["gpu-001"].finishes = False
    system_id = system_id_of(sim, "gpu-001")
    sim.client.post(f"machines/{system_id}/", "commission")
    machine = sim.wait(system_id, "Failed commissioning")
    assert machine["status"] == 2
    assert machine["status_message"] == (
        "Marking node failed - Node operation 'Commissioning' timed out after 0.005 minutes.")
    sim.settle()


# -- deployment ---------------------------------------------------------------------------


def test_deploy_of_a_new_machine_is_409(sim):
    system_id = system_id_of(sim, "gpu-001")
    response = sim.client.post(f"machines/{system_id}/", "deploy", distro_series="bookworm")
    assert response.status_code == 409
    assert response.get_data(as_text=True) == "Can't deploy a machine that is in the 'New' state"


def test_deploy_of_a_deployed_machine_is_409(deployed_sim):
    system_id = system_id_of(deployed_sim, "svc-001")
    response = deployed_sim.client.post(f"machines/{system_id}/", "deploy")
    assert response.status_code == 409
    assert "'Deployed' state" in response.get_data(as_text=True)


def test_deploy_allocates_a_ready_machine_and_installs_through_pxe(sim):
    system_id = commissioned(sim, "svc-001")
    response = sim.client.post(
        f"machines/{system_id}/", "deploy", osystem="debian", distro_series="bookworm",
        hwe_kernel="ga-12", user_data=cloud_config(KEY),
    )
    assert response.status_code == 200
    started = response.get_json()
    assert (started["status"], started["status_name"], started["owner"]) == (
        9, "Deploying", "admin")
    seen: list[str] = []
    machine = sim.wait(system_id, "Deployed", seen=seen)
    assert machine["status"] == 6 and machine["status_message"] == "Deployed"
    assert (machine["osystem"], machine["distro_series"], machine["hwe_kernel"]) == (
        "debian", "bookworm", "ga-12")
    assert machine["ip_addresses"] == [sim.state.node("svc-001").address]
    assert machine["netboot"] is False and machine["power_state"] == "on"
    assert machine["interface_set"][0]["links"][0]["ip_address"] == machine["ip_addresses"][0]
    request = sim.bmcs["svc-001"].requests[-1]
    assert request["action"] == "deploy"
    assert request["ssh_keys"] == [KEY]
    assert request["user_data"].startswith("#cloud-config")
    assert "Installing OS" in seen


def test_deploy_default_image_is_the_lab_image(sim):
    system_id = commissioned(sim)
    sim.client.post(f"machines/{system_id}/", "deploy")
    machine = sim.wait(system_id, "Deployed")
    assert (machine["osystem"], machine["distro_series"]) == ("debian", "bookworm")


def test_deploy_refuses_an_image_maas_does_not_have_and_leaves_the_machine(sim):
    system_id = commissioned(sim)
    response = sim.client.post(f"machines/{system_id}/", "deploy", distro_series="jammy")
    assert response.status_code == 400
    assert response.get_json() == {"distro_series": [
        "'jammy' is not a valid distro_series.  It should be one of: 'debian/bookworm'."]}
    machine = sim.client.machine(system_id)
    assert (machine["status_name"], machine["owner"]) == ("Ready", None)


def test_boot_fail_node_ends_in_failed_deployment(sim):
    system_id = commissioned(sim, "gpu-002")
    sim.bmcs["gpu-002"].boot_fail = True
    sim.client.post(f"machines/{system_id}/", "deploy", user_data=cloud_config(KEY))
    machine = sim.wait(system_id, "Failed deployment")
    assert machine["status"] == 11
    assert machine["status_message"] == (
        "Marking node failed - Installation failed (refer to the installation log for more "
        "information).")
    assert machine["error_description"].startswith("Installation failed")
    assert any("image does not boot" in line for line in sim.logs)


def test_deploy_past_its_deadline_fails_and_withdraws_the_pxe_offer(tmp_path):
    sim = build(tmp_path, timing=replace(FAST, step=0.01, poll=0.01, deploy_timeout=0.3))
    system_id = commissioned(sim)
    sim.bmcs["gpu-001"].finishes = False
    sim.client.post(f"machines/{system_id}/", "deploy")
    machine = sim.wait(system_id, "Failed deployment")
    assert "Node operation 'Deploying' timed out after" in machine["status_message"]
    assert netboot.pending(sim.lab, "gpu-001") is None
    sim.settle()


def test_deploy_waits_for_the_machine_to_report(tmp_path):
    sim = build(tmp_path, timing=replace(FAST, step=0.01, poll=0.01, deploy_timeout=10))
    system_id = commissioned(sim)
    sim.bmcs["gpu-001"].boot_seconds = 0.5
    started = time.monotonic()
    sim.client.post(f"machines/{system_id}/", "deploy")
    time.sleep(0.2)
    assert sim.client.machine(system_id)["status_name"] == "Deploying"
    sim.wait(system_id, "Deployed")
    assert time.monotonic() - started >= 0.5
    sim.settle()


def test_unreachable_bmc_reverts_a_deployment_to_allocated(sim):
    system_id = commissioned(sim)
    sim.bmcs["gpu-001"].reachable = False
    sim.client.post(f"machines/{system_id}/", "deploy")
    machine = sim.wait(system_id, "Allocated")
    assert "Aborting DEPLOYING and reverting to ALLOCATED" in machine["status_message"]


def test_power_on_of_an_allocated_machine_deploys_it(sim):
    system_id = commissioned(sim)
    allocated = sim.client.post("machines/", "allocate", system_id=system_id)
    assert allocated.status_code == 200
    assert allocated.get_json()["status_name"] == "Allocated"
    sim.client.post(f"machines/{system_id}/", "power_on")
    sim.wait(system_id, "Deployed")


def test_user_data_is_decoded_as_maas_metadata_service_does():
    text = "#cloud-config\nssh_authorized_keys: [ssh-rsa AAAA a@b]\n"
    encoded = base64.b64encode(text.encode()).decode()
    assert user_data_text(encoded) == text
    # base64 broken over lines, as some clients send it
    assert user_data_text("\n".join([encoded[:10], encoded[10:]])) == text
    assert user_data_text("#!/bin/sh\necho not base64\n") == "#!/bin/sh\necho not base64\n"
    users = "#cloud-config\nusers:\n  - name: root\n    ssh_authorized_keys: [ssh-rsa B b@c]\n"
    assert ssh_keys_of(users) == ["ssh-rsa B b@c"]
    assert ssh_keys_of("#!/bin/sh\n") == []


# -- release, abort, broken ---------------------------------------------------------------


def test_release_with_erase_powers_off_and_returns_to_ready(sim):
    system_id = deployed(sim)
    before = len(sim.bmcs["gpu-001"].calls)
    response = sim.client.post(f"machines/{system_id}/", "release", erase="true",
                               quick_erase="true")
    assert response.status_code == 200
    assert response.get_json()["status_name"] == "Disk erasing"
    machine = sim.wait(system_id, "Ready")
    assert machine["owner"] is None and machine["osystem"] == ""
    assert machine["ip_addresses"] == [] and machine["netboot"] is True
    assert sim.bmcs["gpu-001"].state == "off"
    # The erase ran in the ephemeral environment: a PXE boot carrying the erase request.
    assert sim.bmcs["gpu-001"].requests[-1]["action"] == "erase"
    assert sim.bmcs["gpu-001"].calls[before:] == ["on-pxe", "off", "query"]


def test_release_without_erase_goes_through_releasing(sim):
    system_id = deployed(sim)
    response = sim.client.post(f"machines/{system_id}/", "release")
    assert response.get_json()["status_name"] == "Releasing"
    machine = sim.wait(system_id, "Ready")
    assert machine["power_state"] == "off"


def test_release_of_a_new_machine_is_409_and_of_a_ready_one_a_no_op(sim):
    system_id = system_id_of(sim, "gpu-001")
    response = sim.client.post(f"machines/{system_id}/", "release")
    assert response.status_code == 409
    assert response.get_data(as_text=True) == (
        "Machine cannot be released in its current state ('New').")
    ready = commissioned(sim, "gpu-002")
    again = sim.client.post(f"machines/{ready}/", "release")
    assert again.status_code == 200 and again.get_json()["status_name"] == "Ready"


def test_release_refuses_a_value_that_is_not_a_boolean(sim):
    system_id = deployed(sim)
    response = sim.client.post(f"machines/{system_id}/", "release", erase="perhaps")
    assert response.status_code == 400
    assert response.get_json() == {"erase": ["Value should be 'true' or 'false'"]}


def test_abort_a_deployment_returns_it_to_allocated_powered_off(sim):
    system_id = commissioned(sim)
    sim.bmcs["gpu-001"].finishes = False
    sim.client.post(f"machines/{system_id}/", "deploy")
    sim.wait(system_id, "Deploying")
    response = sim.client.post(f"machines/{system_id}/", "abort")
    assert response.status_code == 200
    machine = sim.wait(system_id, "Allocated")
    assert machine["status_message"] == "Aborted deployment"
    assert machine["power_state"] == "off"


def test_abort_commissioning_returns_it_to_new(sim):
    system_id = system_id_of(sim, "gpu-001")
    sim.bmcs["gpu-001"].finishes = False
    sim.client.post(f"machines/{system_id}/", "commission")
    sim.client.post(f"machines/{system_id}/", "abort")
    machine = sim.wait(system_id, "New")
    assert machine["status_message"] == "Aborted commissioning"


def test_abort_with_nothing_to_abort_is_409(sim):
    system_id = system_id_of(sim, "gpu-001")
    response = sim.client.post(f"machines/{system_id}/", "abort")
    assert response.status_code == 409
    assert response.get_data(as_text=True) == (
        f"Cannot abort in current state: node {system_id} is in state New.")


def test_mark_broken_and_fixed(deployed_sim):
    client = deployed_sim.client
    system_id = system_id_of(deployed_sim, "gpu-001")
    broken = client.post(f"machines/{system_id}/", "mark_broken", comment="PSU smells")
    assert broken.status_code == 200
    machine = broken.get_json()
    assert (machine["status"], machine["status_name"]) == (8, "Broken")
    assert machine["error_description"] == "PSU smells"
    deployed_sim.settle()
    assert deployed_sim.bmcs["gpu-001"].state == "off"  # a releasable machine is powered off
    fixed = client.post(f"machines/{system_id}/", "mark_fixed")
    assert fixed.get_json()["status_name"] == "Deployed"  # back to what it was
    again = client.post(f"machines/{system_id}/", "mark_fixed")
    assert (again.status_code, again.get_data(as_text=True)) == (
        409, "Can't mark a non-broken node as 'Ready'.")


def test_mark_broken_of_a_machine_the_user_does_not_own_is_403(sim):
    system_id = system_id_of(sim, "gpu-001")
    assert sim.client.post(f"machines/{system_id}/", "mark_broken").status_code == 403


# -- power --------------------------------------------------------------------------------


def test_power_operations_go_through_the_bmc(deployed_sim):
    client = deployed_sim.client
    system_id = system_id_of(deployed_sim, "gpu-002")
    assert client.get(f"machines/{system_id}/", {"op": "query_power_state"}).get_json() == {
        "state": "on"}
    assert client.post(f"machines/{system_id}/", "power_off").status_code == 200
    deployed_sim.settle()
    assert deployed_sim.bmcs["gpu-002"].state == "off"
    assert client.machine(system_id)["power_state"] == "off"
    client.post(f"machines/{system_id}/", "power_on")
    deployed_sim.settle()
    bmc = deployed_sim.bmcs["gpu-002"]
    # A network boot, as MAAS always does, with nothing on offer (the disk boots); then
    # MAAS checks that the power state changed.
    assert bmc.calls[-2:] == ["on-pxe", "query"] and bmc.requests == [] and bmc.state == "on"
    assert client.machine(system_id)["status_name"] == "Deployed"


def test_a_bmc_that_fails_a_few_times_is_tried_again(sim):
    system_id = commissioned(sim)
    bmc = sim.bmcs["gpu-001"]
    bmc.failures = 2
    sim.client.post(f"machines/{system_id}/", "deploy")
    sim.wait(system_id, "Deployed")
    assert "failed,failed,on-pxe" in ",".join(bmc.calls)


def test_a_bmc_that_refuses_the_credentials_is_not_tried_again(sim):
    system_id = system_id_of(sim, "gpu-001")
    bmc = sim.bmcs["gpu-001"]
    bmc.refuses = True
    sim.client.post(f"machines/{system_id}/", "commission")
    machine = sim.wait(system_id, "New")
    assert "Please check power credentials." in machine["status_message"]
    assert len([line for line in sim.logs if "trying again" in line]) == 0


def test_power_on_of_an_unallocated_machine_is_409(sim):
    system_id = system_id_of(sim, "gpu-001")
    response = sim.client.post(f"machines/{system_id}/", "power_on")
    assert (response.status_code, response.get_data(as_text=True)) == (
        409, "Can't start node: it hasn't been allocated.")


def test_query_power_state_of_an_unreachable_bmc_is_503(sim):
    system_id = system_id_of(sim, "gpu-001")
    sim.bmcs["gpu-001"].reachable = False
    response = sim.client.get(f"machines/{system_id}/", {"op": "query_power_state"})
    assert response.status_code == 503
    assert "connection refused" in response.get_data(as_text=True)
    assert sim.client.machine(system_id)["power_state"] == "error"


# -- allocate -----------------------------------------------------------------------------


def test_allocate_picks_a_ready_machine_or_says_none_is_available(sim):
    none = sim.client.post("machines/", "allocate")
    assert (none.status_code, none.get_data(as_text=True)) == (409, "No machine available.")
    system_id = commissioned(sim, "gpu-002")
    named = sim.client.post("machines/", "allocate", name="gpu-002")
    assert named.status_code == 200
    assert named.get_json()["system_id"] == system_id
    assert named.get_json()["owner"] == "admin"
    assert [m["system_id"] for m in sim.client.get(
        "machines/", {"op": "list_allocated"}).get_json()] == [system_id]
    taken = sim.client.post("machines/", "allocate", system_id=system_id)
    assert taken.status_code == 409
    assert taken.get_data(as_text=True) == f"No machine with system ID {system_id} available."


# -- tags ---------------------------------------------------------------------------------


def test_tags_create_update_nodes_and_list_machines(sim):
    client = sim.client
    created = client.post("tags/", name="kiln-pool", comment="in the training pool")
    assert created.status_code == 200
    assert created.get_json() == {"name": "kiln-pool", "definition": "",
                                  "comment": "in the training pool", "kernel_opts": "",
                                  "resource_uri": "/MAAS/api/2.0/tags/kiln-pool/"}
    duplicate = client.post("tags/", name="kiln-pool")
    assert duplicate.status_code == 400
    assert duplicate.get_json() == {"name": ["Tag with this Name already exists."]}
    first, second = (system_id_of(sim, "gpu-001"), system_id_of(sim, "gpu-002"))
    added = client.post("tags/kiln-pool/", "update_nodes", add=[first, second, "nosuch"])
    assert added.get_json() == {"added": 2, "removed": 0}
    assert client.machine(first)["tag_names"] == ["kiln-pool"]
    removed = client.post("tags/kiln-pool/", "update_nodes", remove=first)
    assert removed.get_json() == {"added": 0, "removed": 1}
    members = client.get("tags/kiln-pool/", {"op": "machines"}).get_json()
    assert [m["system_id"] for m in members] == [second]
    assert [m["hostname"] for m in client.get("machines/", {"tags": "kiln-pool"}).get_json()
            ] == ["gpu-002"]
    assert [t["name"] for t in client.get("tags/").get_json()] == ["kiln-pool"]
    assert client.delete("tags/kiln-pool/").status_code == 204
    assert client.get("tags/kiln-pool/").status_code == 404


def test_tag_errors(sim):
    assert sim.client.post("tags/", name="no spaces").get_json() == {
        "name": ["Enter a valid value."]}
    assert sim.client.post("tags/", comment="no name").get_json() == {
        "name": ["This field is required."]}
    missing = sim.client.post("tags/nosuch/", "update_nodes", add="x")
    assert (missing.status_code, missing.get_data(as_text=True)) == (
        404, "No Tag matches the given query.")
    with_xpath = sim.client.post("tags/", name="gpus", definition="//node[@id='display']")
    assert with_xpath.status_code == 501


# -- persistence and --deployed ------------------------------------------------------------


def test_a_restarted_simulator_keeps_its_machines_and_finishes_what_was_in_flight(tmp_path):
    first = build(tmp_path)
    system_id = commissioned(first)
    first.client.post("tags/", name="keep")
    first.client.post("tags/keep/", "update_nodes", add=system_id)
    first.bmcs["gpu-001"].finishes = False  # the machine is still installing at the restart
    first.client.post(f"machines/{system_id}/", "deploy")
    first.wait(system_id, "Deploying")
    for operation in list(first.simulator.lifecycle._operations.values()):
        operation.cancelled.set()  # the old process is gone
    first.settle()
    second = build(tmp_path, bmcs=first.bmcs)
    machine = second.client.machine(system_id)
    assert (machine["status_name"], machine["tag_names"]) == ("Deploying", ["keep"])
    netboot.record_result(second.lab, "gpu-001", "deploy", True)  # the install reports now
    second.wait(system_id, "Deployed")
    second.settle()


def test_deployed_enlistment_is_the_lab_image(deployed_sim):
    for machine in deployed_sim.client.get("machines/").get_json():
        assert (machine["status_name"], machine["owner"], machine["power_state"]) == (
            "Deployed", "admin", "on")
        assert (machine["osystem"], machine["distro_series"], machine["hwe_kernel"]) == (
            "debian", "bookworm", "ga-12")
        assert machine["cpu_count"] > 0 and machine["ip_addresses"]


@pytest.mark.parametrize("method", ["PUT", "DELETE"])
def test_version_has_only_get(sim, method):
    response = sim.client.http.open("/MAAS/api/2.0/version/", method=method)
    assert response.status_code == 405


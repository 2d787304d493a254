"""kiln's MAAS client against the lab's MAAS simulator, served over HTTP on loopback.

No root and no running lab: the simulator (lab/maas_sim) runs on a lab directory in
tmp_path, built by its own unit-test harness (tests/unit/lab/test_maas_sim_harness.py), whose
BMC doubles play the nodes' BMCs and PXE boots. What is under test here is the client and
its lifecycle functions, talking real HTTP to the simulator's real Flask app: OAuth as the
simulator checks it, multipart bodies as Werkzeug parses them, statuses as the simulator's
workers move them. Every request is checked against MAAS's OpenAPI document twice: as the
client recorded it (roles/maas/apicheck.py) and as the simulator received it
(lab/maas_sim/openapi_check.py on its requests.jsonl).
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from test_maas_sim_harness import SimHarness, build
from werkzeug.serving import make_server

from kiln.core.manifest import load_manifest
from kiln.core.retry import RetryPolicy
from kiln.lab.maas_sim import requests_log_path
from kiln.lab.maas_sim.api import create_app
from kiln.lab.maas_sim.openapi_check import check_requests, read_requests
from kiln.roles.maas import (
    MAASAuthError,
    MAASClient,
    MachineFailed,
    Status,
    Waiter,
    commissioned,
    deployed,
    released,
    tagged,
)
from kiln.roles.maas.apicheck import RequestRecorder, SpecValidator
from kiln.roles.maas.userdata import cloud_config, lab_vendor_mirror

ROOT = Path(__file__).resolve().parents[4]
SPEC = ROOT / "tests/fixtures/specs/maas-api-2.0-openapi.yaml"
IMAGE = load_manifest(ROOT / "kiln" / "firmware" / "lab.yaml").os
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKilnLabKeyForUnitTestsOnlyNotARealKey000 kiln"
PGP_KEY = "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmDMEZexample\n-----END PGP PUBLIC KEY BLOCK-----"


class Served:
    """The simulator's Flask app on 127.0.0.1, with a client of kiln's pointed at it."""

    def __init__(self, harness: SimHarness):
        self.harness = harness
        self.server = make_server("127.0.0.1", 0, create_app(harness.simulator), threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/MAAS/"
        self.recorder = RequestRecorder()
        self.progress: list[str] = []

    def client(self, api_key: str | None = None) -> MAASClient:
        return MAASClient(self.url, api_key or self.harness.api_key,
                          key_source="the lab's secrets.yaml",
                          retry=RetryPolicy(attempts=3, first_delay=0.01),
                          on_request=self.recorder)

    def waiter(self) -> Waiter:
        return Waiter(poll_interval=0.02, progress=self.progress.append)

    def received(self) -> list:
        return read_requests(requests_log_path(self.harness.lab))

    def close(self) -> None:
        self.server.shutdown()
        self.thread.join()
        self.harness.settle()


@pytest.fixture
def served(tmp_path: Path):
    running = Served(build(tmp_path))
    yield running
    running.close()


@pytest.fixture(scope="module")
def spec() -> SpecValidator:
    return SpecValidator(SPEC)


def test_new_machine_commissioned_deployed_released_and_tagged(served, spec):
    client = served.client()
    user_data = cloud_config([SSH_KEY], lab_vendor_mirror("http://10.231.0.1:8081/", PGP_KEY))
    node = {"system_id": None, "hostname": "gpu-001"}

    assert client.machine_by_hostname("gpu-001").status == Status.NEW
    ready = commissioned(client, node, timeout=10, waiter=served.waiter())
    assert ready.changed and ready.machine.status == Status.READY
    assert ready.machine.document["cpu_count"] > 0  # the inventory commissioning found

    done = deployed(client, node, IMAGE, user_data, timeout=10, waiter=served.waiter())
    assert done.changed and done.machine.status == Status.DEPLOYED
    assert (done.machine.osystem, done.machine.distro_series, done.machine.hwe_kernel) == (
        IMAGE.osystem, IMAGE.distro_series, IMAGE.hwe_kernel)
    # What the node's PXE boot was given: kiln's key, taken from the user_data by MAAS.
    boot = served.harness.bmcs["gpu-001"].requests[-1]
    assert boot["action"] == "deploy" and boot["ssh_keys"] == [SSH_KEY]
    assert boot["user_data"] == user_data

    posts_before = [r for r in served.received() if r.method == "POST"]
    again = deployed(client, node, IMAGE, user_data, timeout=10, waiter=served.waiter())
    assert not again.changed
    assert [r for r in served.received() if r.method == "POST"] == posts_before

    assert tagged(client, node, "kiln-pool", waiter=served.waiter()).changed
    assert "kiln-pool" in client.machine_by_hostname("gpu-001").tag_names
    assert [m.hostname for m in client.tagged_machines("kiln-pool")] == ["gpu-001"]

    gone = released(client, node, timeout=10, waiter=served.waiter())
    assert gone.changed and gone.machine.status == Status.READY
    assert gone.machine.osystem == ""

    lines = served.progress
    assert "gpu-001: New → Commissioning (0 s)" in lines
    assert any(line.startswith("gpu-001: Commissioning → Ready (") for line in lines)
    assert "gpu-001: Ready → Deploying (0 s)" in lines
    assert any(line.startswith("gpu-001: Deploying → Deployed (") for line in lines)
    assert any(line.startswith("gpu-001: Disk erasing → Ready (") for line in lines)

    # Every request, as sent and as received, is one MAAS's own document allows.
    assert len(served.recorder.requests) == len(served.received()) > 10
    assert spec.check_all(served.recorder.requests) == []
    assert check_requests(served.received()) == []
    # One 404, by design: tagged() looks the tag up before creating it.
    refused = [(r.describe(), r.status) for r in served.received() if r.status != 200]
    assert refused == [("GET /MAAS/api/2.0/tags/kiln-pool/", 404)]


def test_every_plain_call_against_the_simulator_validates(served, spec):
    client = served.client()
    system_id = client.machine_by_hostname("gpu-002").system_id
    assert client.version()["version"]
    assert {m.hostname for m in client.machines()} >= {"gpu-001", "gpu-002"}
    client.commission(system_id)
    served.harness.wait(system_id, "Ready")
    assert client.query_power_state(system_id) == "off"
    client.deploy(system_id, osystem=IMAGE.osystem, distro_series=IMAGE.distro_series,
                  hwe_kernel=IMAGE.hwe_kernel, user_data=cloud_config([SSH_KEY]))
    client.abort(system_id)
    served.harness.wait(system_id, "Allocated")
    client.power_on(system_id)  # MAAS powers on only a machine someone has allocated
    client.power_off(system_id, soft=True)
    client.mark_broken(system_id, comment="HCA mlx5_3 link down")
    client.release(system_id, erase=True, quick_erase=True)
    served.harness.wait(system_id, "Ready")
    client.create_tag("kiln-burnin", comment="burning in")
    client.update_tag_nodes("kiln-burnin", add=[system_id])
    client.update_tag_nodes("kiln-burnin", remove=[system_id])
    assert client.tagged_machines("kiln-burnin") == []
    assert [t["name"] for t in client.tags()] == ["kiln-burnin"]
    assert client.tag("kiln-burnin")["name"] == "kiln-burnin"

    assert spec.check_all(served.recorder.requests) == []
    assert check_requests(served.received()) == []
    assert [r.status for r in served.received()] == [200] * len(served.received())


def test_a_node_that_fails_to_boot_fails_with_maas_status_message(served):
    served.harness.bmcs["gpu-002"].boot_fail = True
    client = served.client()
    node = {"hostname": "gpu-002"}
    commissioned(client, node, timeout=10, waiter=served.waiter())
    with pytest.raises(MachineFailed) as caught:
        deployed(client, node, IMAGE, cloud_config([SSH_KEY]), timeout=10,
                 waiter=served.waiter())
    text = str(caught.value)
    assert text.startswith("gpu-002: deploying debian/bookworm (ga-12) failed")
    assert "Failed deployment" in text
    assert caught.value.status_message == (
        "Marking node failed - Installation failed (refer to the installation log for "
        "more information)."
    )


def test_a_wrong_key_is_one_request_and_a_clear_error(served):
    consumer, token, _ = served.harness.api_key.split(":")
    client = served.client(f"{consumer}:{token}:{'x' * 32}")
    with pytest.raises(MAASAuthError, match=rf"^MAAS rejected the API key: {served.url} "):
        client.machines()
    assert len(served.received()) == 1
    assert served.received()[0].status == 401

"""The inventory model: every validation rule, and the groups a pyinfra inventory gets."""

import copy
from pathlib import Path

import pytest
import yaml

from kiln.core.errors import ValidationFailed
from kiln.core.inventory import load_cluster, pyinfra_groups

ROOT = Path(__file__).resolve().parents[3]
FIRMWARE = ROOT / "kiln" / "firmware"


@pytest.fixture
def prod_doc() -> dict:
    return yaml.safe_load((ROOT / "inventory/prod.yaml").read_text())


def write(tmp_path: Path, document: dict) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(copy.deepcopy(document)))
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ValidationFailed) as info:
        load_cluster(path, FIRMWARE)
    return info.value.problems


def test_example_inventory_loads():
    cluster = load_cluster(ROOT / "inventory/prod.yaml", FIRMWARE)
    assert [node.hostname for _, node in cluster.nodes()][:3] == ["svc-001", "ufm-001", "gpu-001"]


def test_groups_by_role_and_rack():
    cluster = load_cluster(ROOT / "inventory/prod.yaml", FIRMWARE)
    groups = pyinfra_groups(cluster)
    assert {name for name, _ in groups["gpu"]} == {"gpu-001", "gpu-002", "gpu-017", "gpu-018"}
    assert [name for name, _ in groups["service"]] == ["svc-001"]
    assert [name for name, _ in groups["ufm"]] == ["ufm-001"]
    assert [name for name, _ in groups["rack_r02"]] == ["gpu-017", "gpu-018"]
    data = dict(groups["gpu"])["gpu-017"]
    assert data["ssh_hostname"] == "10.10.2.17"
    assert data["kiln_bmc"]["protocol"] == "redfish"
    assert data["kiln_bmc"]["ca_bundle"] == "/etc/kiln/bmc-ca.pem"
    assert data["kiln_maas"] == {"system_id": "4y3h8q", "hostname": None}
    # a node without a MAAS system id is known to MAAS by its hostname
    assert dict(groups["ufm"])["ufm-001"]["kiln_maas"]["hostname"] == "ufm-001"


def test_duplicate_hostname(tmp_path, prod_doc):
    prod_doc["racks"][1]["nodes"][0]["hostname"] = "gpu-001"
    (problem,) = problems_of(write(tmp_path, prod_doc))
    assert "duplicate hostname 'gpu-001'" in problem
    assert "racks.0.nodes.2" in problem and "racks.1.nodes.0" in problem


def test_duplicate_bmc_address(tmp_path, prod_doc):
    prod_doc["racks"][1]["nodes"][1]["bmc"]["address"] = "10.20.1.1"
    (problem,) = problems_of(write(tmp_path, prod_doc))
    assert "duplicate BMC address 10.20.1.1" in problem
    assert "gpu-001" in problem and "gpu-018" in problem


def test_duplicate_node_address(tmp_path, prod_doc):
    prod_doc["racks"][0]["nodes"][3]["address"] = "10.10.1.1"
    problems = problems_of(write(tmp_path, prod_doc))
    assert any("duplicate node address 10.10.1.1" in p for p in problems), problems
    # The same last octet is the same IPoIB host number on every rail: named too.
    assert any("IPoIB host number 1 is node gpu-001's too" in p for p in problems), problems
    assert len(problems) == 2


def test_address_shared_by_node_and_bmc(tmp_path, prod_doc):
    prod_doc["racks"][0]["nodes"][3]["address"] = "10.20.1.1"
    problems = problems_of(write(tmp_path, prod_doc))
    assert any("10.20.1.1 is used both by a node and by a BMC" in p for p in problems), problems


def test_unknown_sku(tmp_path, prod_doc):
    prod_doc["racks"][0]["nodes"][2]["sku"] = "hgx-b200"
    (problem,) = problems_of(write(tmp_path, prod_doc))
    assert "racks.0.nodes.2.sku: unknown SKU 'hgx-b200' for node gpu-001" in problem
    assert "hgx-h100-sxm" in problem  # lists what is known


def test_node_without_bmc(tmp_path, prod_doc):
    del prod_doc["racks"][1]["nodes"][1]["bmc"]
    (problem,) = problems_of(write(tmp_path, prod_doc))
    assert "racks.1.nodes.1.bmc: node gpu-018 has no BMC" in problem


def test_node_with_empty_bmc(tmp_path, prod_doc):
    prod_doc["racks"][1]["nodes"][1]["bmc"] = {}
    (problem,) = problems_of(write(tmp_path, prod_doc))
    assert "node gpu-018 has no BMC" in problem


def test_bad_bmc_protocol(tmp_path, prod_doc):
    prod_doc["racks"][0]["nodes"][2]["bmc"]["protocol"] = "telnet"
    (problem,) = problems_of(write(tmp_path, prod_doc))
    assert "racks.0.nodes.2.bmc.protocol" in problem


def test_bad_hostname_and_address_listed_together(tmp_path, prod_doc):
    prod_doc["racks"][0]["nodes"][2]["hostname"] = "GPU_001"
    prod_doc["racks"][0]["nodes"][3]["address"] = "10.10.1.999"
    problems = problems_of(write(tmp_path, prod_doc))
    assert len(problems) == 2
    assert any("racks.0.nodes.2.hostname" in p for p in problems)
    assert any("racks.0.nodes.3.address" in p for p in problems)


def test_unknown_role(tmp_path, prod_doc):
    prod_doc["racks"][0]["nodes"][2]["role"] = "storage"
    (problem,) = problems_of(write(tmp_path, prod_doc))
    assert "racks.0.nodes.2.role" in problem


def test_duplicate_rack_and_maas_system_id(tmp_path, prod_doc):
    prod_doc["racks"][1]["name"] = "r01"
    prod_doc["racks"][1]["nodes"][1]["maas"]["system_id"] = "4y3h8a"
    problems = problems_of(write(tmp_path, prod_doc))
    assert any("duplicate rack name 'r01'" in p for p in problems)
    assert any("duplicate MAAS system_id '4y3h8a'" in p for p in problems)


def test_credentials_are_not_accepted_in_the_inventory(tmp_path, prod_doc):
    prod_doc["racks"][0]["nodes"][2]["bmc"]["password"] = "hunter2"
    (problem,) = problems_of(write(tmp_path, prod_doc))
    assert "racks.0.nodes.2.bmc.password: unknown field" in problem
    assert "hunter2" not in problem

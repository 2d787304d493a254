"""The golden manifest model: the shipped files are valid; every rule rejects what it should."""

import copy
from pathlib import Path

import pytest
import yaml

from kiln.core.errors import ValidationFailed
from kiln.core.manifest import GPU_STACK_PACKAGES, load_manifest
from kiln.lab.firmware_blobs import blob_bytes, blob_file_name, blob_sha256

ROOT = Path(__file__).resolve().parents[3]
SHIPPED = sorted((ROOT / "kiln" / "firmware").glob("*.yaml"))


def write(tmp_path: Path, document: dict, name: str = "x") -> Path:
    path = tmp_path / f"{name}.yaml"
    document = copy.deepcopy(document)
    document.setdefault("sku", name)
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture
def lab_doc() -> dict:
    document = yaml.safe_load((ROOT / "kiln/firmware/lab.yaml").read_text())
    document["sku"] = "x"
    return document


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ValidationFailed) as info:
        load_manifest(path)
    return info.value.problems


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_manifests_are_valid(path):
    manifest = load_manifest(path)
    assert manifest.sku == path.stem
    assert manifest.topology.gpu.count == 8
    for key in GPU_STACK_PACKAGES + ("nvidia-fabricmanager",):
        assert key in manifest.packages


def test_production_manifest_pins_what_an_hgx_node_runs():
    manifest = load_manifest(ROOT / "kiln/firmware/hgx-h100-sxm.yaml")
    driver = manifest.packages["nvidia-driver"].version
    fabricmanager = manifest.packages["nvidia-fabricmanager"].version
    # fabric manager must run the driver's exact upstream version
    assert driver.split("-")[0] == fabricmanager.split("-")[0]
    assert manifest.packages["libnccl2"].version == manifest.packages["libnccl-dev"].version
    assert manifest.firmware["connectx7"].match.psid == "MT_0000000838"
    pins = manifest.pinned_packages()
    assert pins["linux-image-5.15.0-140-generic"] == "5.15.0-140.150"
    assert all(pin.hold for pin in manifest.packages.values())


def test_lab_blobs_match_the_lab_generator():
    manifest = load_manifest(ROOT / "kiln/firmware/lab.yaml")
    for name, component in manifest.firmware.items():
        if component.blob is None:
            continue
        assert component.blob.file == blob_file_name(name, component.version)
        assert component.blob.sha256 == blob_sha256(name, component.version)
        assert component.blob.size == len(blob_bytes(name, component.version))


def test_missing_field_names_file_and_path(tmp_path, lab_doc):
    del lab_doc["packages"]["nvidia-driver"]["version"]
    path = write(tmp_path, lab_doc)
    assert problems_of(path) == [f"{path}: packages.nvidia-driver.version: field required"]


def test_every_problem_is_listed_not_just_the_first(tmp_path, lab_doc):
    del lab_doc["packages"]["nvidia-driver"]["version"]
    del lab_doc["os"]["distro_series"]
    lab_doc["burnin"]["ib_write_bw_min_gbps"] = -1
    problems = problems_of(write(tmp_path, lab_doc))
    assert len(problems) == 3
    assert any("os.distro_series: field required" in p for p in problems)
    assert any("burnin.ib_write_bw_min_gbps" in p for p in problems)


def test_unknown_key_is_an_error(tmp_path, lab_doc):
    lab_doc["packages"]["libnccl2"]["hodl"] = True
    (problem,) = problems_of(write(tmp_path, lab_doc))
    assert "packages.libnccl2.hodl: unknown field" in problem


@pytest.mark.parametrize("version", ["570.*", ">= 570.1", "", "latest"])
def test_package_version_must_be_exact(tmp_path, lab_doc, version):
    lab_doc["packages"]["nvidia-driver"]["version"] = version
    (problem,) = problems_of(write(tmp_path, lab_doc))
    assert "packages.nvidia-driver.version" in problem
    assert "exact" in problem


def test_package_name_must_be_a_debian_name(tmp_path, lab_doc):
    lab_doc["packages"]["dcgm"]["name"] = "DCGM 4"
    (problem,) = problems_of(write(tmp_path, lab_doc))
    assert "packages.dcgm.name" in problem


def test_gpu_sku_must_pin_the_whole_stack(tmp_path, lab_doc):
    del lab_doc["packages"]["libnccl-dev"]
    del lab_doc["packages"]["nvidia-fabricmanager"]
    (problem,) = problems_of(write(tmp_path, lab_doc))
    assert "libnccl-dev" in problem and "nvidia-fabricmanager" in problem


def test_cpu_only_sku_needs_no_gpu_stack(tmp_path, lab_doc):
    lab_doc["topology"]["gpu"] = {"count": 0}
    lab_doc["topology"]["hca"] = {"count": 0}
    lab_doc["packages"] = {}
    assert load_manifest(write(tmp_path, lab_doc)).packages == {}


def test_blob_sha256_must_be_a_hex_digest(tmp_path, lab_doc):
    lab_doc["firmware"]["bios"]["blob"]["sha256"] = "abc"
    (problem,) = problems_of(write(tmp_path, lab_doc))
    assert "firmware.bios.blob.sha256" in problem


def test_blob_file_is_a_plain_name(tmp_path, lab_doc):
    lab_doc["firmware"]["bios"]["blob"]["file"] = "../../etc/passwd"
    (problem,) = problems_of(write(tmp_path, lab_doc))
    assert "firmware.bios.blob.file" in problem


def test_mlxfwmanager_update_needs_a_psid(tmp_path, lab_doc):
    lab_doc["firmware"]["connectx7"]["match"] = {"redfish": {"name_pattern": "ConnectX"}}
    (problem,) = problems_of(write(tmp_path, lab_doc))
    assert "firmware.connectx7" in problem and "psid" in problem


def test_redfish_update_needs_a_redfish_rule(tmp_path, lab_doc):
    lab_doc["firmware"]["bios"]["match"] = {"psid": "MT_1"}
    (problem,) = problems_of(write(tmp_path, lab_doc))
    assert "firmware.bios" in problem and "match.redfish" in problem


def test_recognition_needs_a_source(tmp_path, lab_doc):
    lab_doc["firmware"]["gpu-vbios"]["match"] = {}
    (problem,) = problems_of(write(tmp_path, lab_doc))
    assert "firmware.gpu-vbios.match" in problem


def test_bad_regular_expression(tmp_path, lab_doc):
    lab_doc["firmware"]["bios"]["match"]["redfish"]["id_pattern"] = "^(BIOS"
    (problem,) = problems_of(write(tmp_path, lab_doc))
    assert "firmware.bios.match.redfish" in problem and "regular expression" in problem


def test_pcie_width_must_be_a_real_width(tmp_path, lab_doc):
    lab_doc["topology"]["hca"]["pcie"]["width"] = 12
    (problem,) = problems_of(write(tmp_path, lab_doc))
    assert "topology.hca.pcie.width" in problem


def test_max_parallel_firmware_at_least_one(tmp_path, lab_doc):
    lab_doc["max_parallel_firmware"] = 0
    (problem,) = problems_of(write(tmp_path, lab_doc))
    assert "max_parallel_firmware" in problem


def test_sku_must_match_file_name(tmp_path, lab_doc):
    lab_doc["sku"] = "hgx-h100-sxm"
    (problem,) = problems_of(write(tmp_path, lab_doc, name="x"))
    assert "does not match the file name" in problem


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("sku: x\npackages:\n  - a\n b: c\n")
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}: line ")
    assert "not valid YAML" in problem


def test_missing_file(tmp_path):
    (problem,) = problems_of(tmp_path / "nope.yaml")
    assert "no such file" in problem

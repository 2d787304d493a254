"""The simulated hardware profile: deterministic, HGX H100-shaped, firmware as pinned."""

from __future__ import annotations

from pathlib import Path

import yaml

from kiln.lab.hwsim.profile import FIRMWARE, OLD_FIRMWARE, generate_profile

ROOT = Path(__file__).resolve().parents[3]


def test_same_seed_and_name_give_the_same_profile():
    assert generate_profile("gpu-003", 3) == generate_profile("gpu-003", 3)


def test_nodes_and_seeds_differ():
    a, b = generate_profile("gpu-003", 3), generate_profile("gpu-004", 4)
    c = generate_profile("gpu-003", 3, seed="other")
    assert a["gpus"][0]["uuid"] != b["gpus"][0]["uuid"]
    assert a["gpus"][0]["serial"] != c["gpus"][0]["serial"]
    assert a["hcas"][0]["node_guid"] != b["hcas"][0]["node_guid"]


def test_gpu_node_is_an_hgx_h100():
    p = generate_profile("gpu-001", 1)
    assert [g["name"] for g in p["gpus"]] == ["NVIDIA H100 80GB HBM3"] * 8
    assert [g["pci_bus_id"][9:11] for g in p["gpus"]] == [
        "19", "3B", "4C", "5D", "9B", "BB", "CB", "DB"]
    assert all(len(g["nvlinks"]) == 18 for g in p["gpus"])
    assert all(g["uuid"].startswith("GPU-") and len(g["uuid"]) == 40 for g in p["gpus"])
    assert [h["name"] for h in p["hcas"]] == [f"mlx5_{i}" for i in range(8)]
    assert {h["psid"] for h in p["hcas"]} == {"MT_0000000838"}
    assert {h["ports"][0]["rate"] for h in p["hcas"]} == {400}
    lids = [h["ports"][0]["lid"] for n in (1, 2)
            for h in generate_profile(f"gpu-00{n}", n)["hcas"]]
    assert len(set(lids)) == 16  # unique across the fabric


def test_service_node_has_no_gpus_or_hcas():
    p = generate_profile("svc-01", 9, role="service")
    assert p["gpus"] == [] and p["hcas"] == [] and p["nvswitches"] == []
    assert p["firmware"] == {"bios": FIRMWARE["bios"], "bmc": FIRMWARE["bmc"]}
    assert p["mgmt_nic"]["name"] == "eno1"


def test_golden_firmware_is_what_the_lab_manifest_pins():
    manifest = yaml.safe_load((ROOT / "kiln" / "firmware" / "lab.yaml").read_text())["firmware"]
    for component in ("bios", "bmc", "connectx7", "gpu-vbios"):
        assert FIRMWARE[component] == str(manifest[component]["version"])
        assert OLD_FIRMWARE[component] != FIRMWARE[component]
    old = generate_profile("gpu-001", 1, firmware="old")
    assert {h["fw_version"] for h in old["hcas"]} == {OLD_FIRMWARE["connectx7"]}
    assert {g["vbios_version"] for g in old["gpus"]} == {OLD_FIRMWARE["gpu-vbios"]}


def test_a_node_boots_the_newest_installed_kernel_or_the_image_s_own(tmp_path):
    from kiln.core.manifest import load_manifest
    from kiln.core.paths import FIRMWARE_DIR
    from kiln.lab.hwsim.lab_hooks import booted_kernel
    from kiln.lab.hwsim.profile import IMAGE_KERNEL
    from kiln.lab.vendor.catalogue import KERNEL_FLAVOUR, KERNEL_RELEASES

    # The image's kernel is the newest the vendor repository ships, and the one the lab
    # manifest pins: a node MAAS deployed runs the pinned kernel.
    assert IMAGE_KERNEL == f"{KERNEL_RELEASES[-1][0]}-{KERNEL_FLAVOUR}"
    kernel = load_manifest(FIRMWARE_DIR / "lab.yaml").os.kernel
    assert IMAGE_KERNEL == f"{kernel.abi}-{kernel.flavour}"
    assert booted_kernel(tmp_path) == IMAGE_KERNEL
    boot = tmp_path / "boot"
    boot.mkdir()
    for release in ("6.1.0-9-kilnlab", "6.1.0-27-kilnlab", "6.1.0-10-kilnlab"):
        (boot / f"vmlinuz-{release}").write_text("")
    (boot / "config-6.1.0-99-kilnlab").write_text("")  # not a kernel image
    assert booted_kernel(tmp_path) == "6.1.0-27-kilnlab"

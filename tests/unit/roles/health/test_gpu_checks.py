"""GPU checks on a real `nvidia-smi -q` capture of an 8x H100 SXM node (driver 535.161.08,
tests/fixtures/nvidia-smi/q.h100x8.535.161.08.txt), judged against the shipped HGX H100
manifest, and on copies of it changed the way each failure changes the real output."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kiln.core.checks import Action, Status
from kiln.core.manifest import load_manifest
from kiln.core.paths import FIRMWARE_DIR
from kiln.roles.health import gpu

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures"
CAPTURE = (FIXTURES / "nvidia-smi" / "q.h100x8.535.161.08.txt").read_text()


@pytest.fixture(scope="module")
def manifest():
    loaded = load_manifest(FIRMWARE_DIR / "hgx-h100-sxm.yaml")
    # The capture's node runs driver 535.161.08: pin that, so only the faults below differ.
    driver = loaded.packages["nvidia-driver"].model_copy(
        update={"version": "535.161.08-0ubuntu1"})
    return loaded.model_copy(update={"packages": {**loaded.packages, "nvidia-driver": driver}})


def state(text: str = CAPTURE, rc: int = 0) -> gpu.SmiState:
    return gpu.smi_state(text, rc)


def in_gpu(text: str, bus: str, old: str, new: str) -> str:
    """Change the first `old` line inside the block of GPU `bus` (e.g. 00000000:5D:00.0)."""
    start = text.index(f"GPU {bus}")
    following = re.search(r"\nGPU [0-9A-F]{8}:", text[start + 5:])
    end = start + 5 + following.start() if following else len(text)
    block = text[start:end]
    assert old in block, old
    return text[:start] + block.replace(old, new, 1) + text[end:]


def by_subject(results):
    return {r.subject.key: r for r in results}


def test_the_real_capture_is_healthy_except_the_pinned_versions(manifest):
    smi = state()
    assert smi.report is not None and smi.problem is None
    for check in (gpu.check_count, gpu.check_config, gpu.check_memory, gpu.check_pcie):
        results = check("gpu-01", smi, manifest)
        assert results and all(r.status == Status.OK for r in results), \
            [r.message for r in results if not r.ok]
    # The manifest pins VBIOS 96.00.74.00.0D; the capture's GPUs run another: named per GPU.
    versions = gpu.check_versions("gpu-01", smi, manifest)
    assert len(versions) == 8
    vbios = [r for r in versions if r.status == Status.CRITICAL]
    for r in vbios:
        assert any("VBIOS" in p for p in r.problems) and r.remediation.action == Action.REFLASH
    assert all(dict(r.subject.ids)["PCI"].startswith("00000000:") for r in versions)


def test_the_real_capture_shows_a_power_brake_on_every_gpu(manifest):
    # The captured node is not healthy: its baseboard holds all 8 GPUs in HW Power Brake
    # Slowdown (clocks at 86 MHz). No error anywhere else says so; this check does.
    results = gpu.check_thermal("gpu-01", state(), manifest)
    assert len(results) == 8 and all(r.status == Status.CRITICAL for r in results)
    for r in results:
        assert "hw power brake slowdown active" in " ".join(r.problems)
        assert r.remediation.action == Action.CHECK_CABLE
        assert "power" in r.remediation.detail
        assert r.evidence["clocks"]["sm"] == 86


def unbraked(text: str = CAPTURE) -> str:
    """The capture as it would read without the power brake (clocks aside)."""
    text = re.sub(r"(HW Slowdown +: )Active", r"\1Not Active", text)
    return re.sub(r"(HW Power Brake Slowdown +: )Active", r"\1Not Active", text)


def test_count_names_a_missing_gpu_and_a_lost_one(manifest):
    lost = ("Unable to determine the device handle for GPU0000:DB:00.0: GPU is lost.  "
            "Reboot the system to recover this GPU")
    smi = state(lost + "\n" + CAPTURE, rc=15)
    results = gpu.check_count("gpu-01", smi, manifest)
    lost_result = next(r for r in results if r.subject.part == "GPU")
    assert lost_result.status == Status.CRITICAL
    assert lost_result.subject.name == "0000:DB:00.0"
    assert "fallen off the bus" in lost_result.problems[0]


@pytest.mark.parametrize("text, rc, words", [
    ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure "
     "that the latest NVIDIA driver is installed and running.", 9, "no driver loaded"),
    ("Failed to initialize NVML: Driver/library version mismatch\nNVML library version: "
     "570.148", 18, "mismatch"),
    ("", 0, "printed nothing"),
])
def test_nvidia_smi_failure_modes_are_told_apart(manifest, text, rc, words):
    smi = state(text, rc)
    assert smi.report is None and words in smi.problem
    [result] = gpu.check_count("gpu-01", smi, manifest)
    assert result.status == Status.CRITICAL and words in result.problems[0]


def test_no_devices_is_zero_gpus(manifest):
    [result] = gpu.check_count("gpu-01", state("No devices were found", 6), manifest)
    assert result.status == Status.CRITICAL and "0 of 8 GPUs" in result.problems[0]


def test_ecc_counters_remaps_and_the_straggler_threshold(manifest):
    bus = "00000000:5D:00.0"
    text = in_gpu(CAPTURE, bus, "DRAM Uncorrectable            : 0",
                  "DRAM Uncorrectable            : 2")
    results = by_subject(gpu.check_memory("gpu-01", state(text), manifest))
    bad = [r for r in results.values() if r.status == Status.CRITICAL]
    assert len(bad) == 1 and dict(bad[0].subject.ids)["PCI"] == bus
    assert any("volatile uncorrectable" in p for p in bad[0].problems)

    storm = in_gpu(CAPTURE, bus, "DRAM Correctable              : 0",
                   "DRAM Correctable              : 25000")
    [bad] = [r for r in gpu.check_memory("gpu-01", state(storm), manifest) if not r.ok]
    assert "straggler" in " ".join(bad.problems) and bad.evidence["volatile_correctable"] == 25000

    pending = in_gpu(CAPTURE, bus, "Pending                           : No",
                     "Pending                           : Yes")
    [bad] = [r for r in gpu.check_memory("gpu-01", state(pending), manifest) if not r.ok]
    assert bad.problems == ("row remap pending",) and bad.remediation.action == Action.REBOOT


def test_pcie_generation_and_width_exactly_as_the_sku(manifest):
    bus = "00000000:9B:00.0"
    block = CAPTURE[CAPTURE.index(f"GPU {bus}"):]
    gen_line = re.search(r"( +Current +: )5\n", block).group(0)
    text = in_gpu(CAPTURE, bus, gen_line, gen_line.replace(": 5", ": 4"))
    [bad] = [r for r in gpu.check_pcie("gpu-01", state(text), manifest) if not r.ok]
    assert bad.problems == ("PCIe Gen4, not Gen5",)
    text = in_gpu(CAPTURE, bus, "Current                   : 16x", "Current                   : 8x")
    [bad] = [r for r in gpu.check_pcie("gpu-01", state(text), manifest) if not r.ok]
    assert bad.problems == ("PCIe x8, not x16",) and bad.remediation.action == Action.RESEAT


def test_thermal_slowdown_and_temperature(manifest):
    bus = "00000000:19:00.0"
    clean = unbraked()
    assert all(r.ok for r in gpu.check_thermal("gpu-01", state(clean), manifest))
    block = clean[clean.index(f"GPU {bus}"):]
    line = re.search(r"HW Thermal Slowdown +: Not Active", block).group(0)
    text = in_gpu(clean, bus, line, line.replace("Not Active", "Active"))
    [bad] = [r for r in gpu.check_thermal("gpu-01", state(text), manifest) if not r.ok]
    assert bad.status == Status.CRITICAL and "hw thermal slowdown" in bad.problems[0]


def test_ecc_mode_and_persistence(manifest):
    bus = "00000000:19:00.0"
    text = in_gpu(CAPTURE, bus, "Persistence Mode                      : Enabled",
                  "Persistence Mode                      : Disabled")
    [bad] = [r for r in gpu.check_config("gpu-01", state(text), manifest) if not r.ok]
    assert "persistence mode Disabled" in bad.problems[0]


def test_fabric_manager_and_fabric_state(manifest):
    smi = state()
    results = gpu.check_fabric("gpu-01", smi, "active", manifest)
    assert len(results) == 9 and all(r.ok for r in results)
    [node] = [r for r in gpu.check_fabric("gpu-01", smi, "failed", manifest)
              if r.subject.part is None]
    assert node.status == Status.CRITICAL and "failed" in node.problems[0]
    text = in_gpu(CAPTURE, "00000000:19:00.0", "State                             : Completed",
                  "State                             : In Progress")
    bad = [r for r in gpu.check_fabric("gpu-01", state(text), "active", manifest) if not r.ok]
    assert len(bad) == 1 and "In Progress" in bad[0].problems[0]

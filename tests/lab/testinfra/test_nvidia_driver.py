"""The running NVIDIA driver is the pinned one, and its daemons run (nvidia-smi, systemctl)."""

from __future__ import annotations

import pytest

from kiln.roles.nvidia.parsers import parse_nvidia_smi_q


def _pinned_driver(node) -> str:
    version = node.manifest.packages["nvidia-driver"].version
    return version.split(":", 1)[-1].rsplit("-", 1)[0]


@pytest.mark.gpu_node
def test_nvidia_smi_reports_the_pinned_driver_on_every_gpu(node):
    smi = parse_nvidia_smi_q(node.host.check_output("nvidia-smi -q"))
    assert smi["driver_version"] == _pinned_driver(node)
    assert smi["attached_gpus"] == node.manifest.topology.gpu.count
    per_gpu = node.host.check_output(
        "nvidia-smi --query-gpu=driver_version --format=csv,noheader").split()
    assert set(per_gpu) == {_pinned_driver(node)}


def _unit_state(node, unit: str) -> tuple[str, str]:
    # systemctl itself, whatever PID 1 is (testinfra's service module picks SysV init
    # scripts when PID 1 is not systemd, as on a lab node).
    enabled = node.host.run(f"systemctl is-enabled {unit}").stdout.strip()
    active = node.host.run(f"systemctl is-active {unit}").stdout.strip()
    return enabled, active


@pytest.mark.gpu_node
def test_fabric_manager_runs_where_there_are_nvswitches(node):
    if node.manifest.topology.gpu.nvswitch_count == 0:
        return
    assert _unit_state(node, "nvidia-fabricmanager") == ("enabled", "active")
    assert node.host.process.filter(comm="nv-fabricmanager") or node.host.run(
        "pgrep -f nv-fabricmanager").rc == 0


@pytest.mark.gpu_node
@pytest.mark.parametrize("unit", ["nvidia-persistenced", "nvidia-dcgm"])
def test_gpu_daemons_enabled_and_running(node, unit):
    assert _unit_state(node, unit) == ("enabled", "active")

"""The running NVIDIA driver is the pinned one, and its daemons run (nvidia-smi, systemctl)."""

from __future__ import annotations

import pytest

from roles.nvidia.parsers import parse_nvidia_smi_q


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


@pytest.mark.gpu_node
def test_fabric_manager_runs_where_there_are_nvswitches(node):
    if node.manifest.topology.gpu.nvswitch_count == 0:
        return
    assert node.host.service("nvidia-fabricmanager").is_enabled
    assert node.host.service("nvidia-fabricmanager").is_running


@pytest.mark.gpu_node
@pytest.mark.parametrize("unit", ["nvidia-persistenced", "nvidia-dcgm"])
def test_gpu_daemons_enabled_and_running(node, unit):
    assert node.host.service(unit).is_enabled
    assert node.host.service(unit).is_running

"""The lab's Slurm configuration (kiln/lab/slurm.py): what imaging writes, from the node list."""

from __future__ import annotations

import pytest

from kiln.lab import slurm
from kiln.lab.state import plan_nodes


def test_slurm_conf_names_the_first_service_node_and_every_gpu_node():
    nodes = plan_nodes(3, 2)
    conf = slurm.slurm_conf(nodes)
    lines = conf.splitlines()
    assert "SlurmctldHost=svc-001(10.231.0.14)" in lines
    assert [line.split()[:2] for line in lines if line.startswith("NodeName=")] == [
        ["NodeName=gpu-001", "NodeAddr=10.231.0.11"],
        ["NodeName=gpu-002", "NodeAddr=10.231.0.12"],
        ["NodeName=gpu-003", "NodeAddr=10.231.0.13"],
    ]
    assert ("PartitionName=gpu Nodes=gpu-001,gpu-002,gpu-003 Default=YES MaxTime=INFINITE "
            "State=UP") in lines
    for setting in ("ReturnToService=2", "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none", "JobAcctGatherType=jobacct_gather/none",
                    "SlurmdParameters=config_overrides", "AuthType=auth/munge"):
        assert setting in lines
    assert slurm.controller(nodes) == "svc-001"


def test_a_lab_without_a_service_node_has_no_controller():
    nodes = plan_nodes(2, 0)
    assert slurm.controller(nodes) is None
    with pytest.raises(ValueError, match="service node"):
        slurm.slurm_conf(nodes)


def test_each_munge_key_is_new_random_and_private(tmp_path):
    first = slurm.new_munge_key(tmp_path)
    content = first.read_bytes()
    assert first == tmp_path / "slurm" / "munge.key"
    assert first.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "slurm").stat().st_mode & 0o777 == 0o700
    assert len(content) == slurm.MUNGE_KEY_BYTES
    assert slurm.new_munge_key(tmp_path).read_bytes() != content

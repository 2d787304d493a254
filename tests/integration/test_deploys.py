"""The deploy files load under pyinfra and list their stages; unbuilt stages fail loudly."""

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYINFRA = ROOT / ".venv/bin/pyinfra"
STAGES = ["Provision", "Mirror", "Base", "NVIDIA", "InfiniBand", "Firmware", "Kraken",
          "Health", "Burn-in", "Gate"]


def pyinfra(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(PYINFRA), *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


def test_a_preview_without_maas_plans_only_provisioning_and_says_why():
    """The example inventory's MAAS credentials are not on this machine: nothing can tell
    whether a node has an OS, so nothing is read from the nodes and no later stage is
    planned; the preview still succeeds and names the cause. (The full plan, stage by
    stage, is checked on the lab: tests/lab/test_bringup.py.)"""
    result = pyinfra("--dry", "inventory/prod.py", "deploy/bringup.py")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-2000:]
    for node in ("gpu-001", "gpu-002", "gpu-017", "gpu-018", "svc-001", "ufm-001"):
        assert f"[{node}] provision: cannot ask MAAS whether it is deployed" in output
    assert "6 (gpu-001, gpu-002, gpu-017, gpu-018, svc-001, ...)" in output
    assert "    Provision" in output and "    Base" not in output


@pytest.mark.parametrize("deploy", ["deploy/reprovision.py", "deploy/audit.py"])
def test_other_deploys_load(deploy):
    result = pyinfra("--dry", "inventory/prod.py", deploy, "--limit", "gpu-017")
    assert result.returncode == 0, result.stderr
    assert "gpu-017" in result.stdout + result.stderr
    assert "gpu-018" not in result.stdout + result.stderr


def test_provisioning_without_credentials_fails_the_node_and_says_why():
    """The example inventory names /etc/kiln/secrets.yaml, which is not on this machine."""
    result = pyinfra("-y", "inventory/prod.py", "deploy/bringup.py", "--limit", "gpu-001")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "[gpu-001] provision: /etc/kiln/secrets.yaml: secrets file named in group data " \
           "does not exist" in output
    # nothing after the failed stage ran on it
    assert "Starting operation: Base" not in output

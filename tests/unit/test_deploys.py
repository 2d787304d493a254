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


def test_bringup_dry_run_lists_every_stage_in_order():
    result = pyinfra("--dry", "inventory/prod.py", "deploy/bringup.py")
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    positions = [output.index(f"    {stage}") for stage in STAGES]
    assert positions == sorted(positions)
    # GPU-only stages run on the four GPU nodes, the mirror on the service node only
    mirror_lines = [line for line in output.splitlines() if line.strip().startswith("Mirror")]
    assert mirror_lines and all("1 (svc-001)" in line for line in mirror_lines)
    assert "4 (gpu-001, gpu-002, gpu-017, gpu-018)" in output


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

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
    assert "stage=mirror" in output and "1 (svc-001)" in output
    assert "4 (gpu-001, gpu-002, gpu-017, gpu-018)" in output


@pytest.mark.parametrize("deploy", ["deploy/reprovision.py", "deploy/audit.py"])
def test_other_deploys_load(deploy):
    result = pyinfra("--dry", "inventory/prod.py", deploy, "--limit", "gpu-017")
    assert result.returncode == 0, result.stderr
    assert "gpu-017" in result.stdout + result.stderr
    assert "gpu-018" not in result.stdout + result.stderr


def test_unbuilt_stage_fails_the_run_and_says_so():
    result = pyinfra("-y", "inventory/prod.py", "deploy/bringup.py", "--limit", "gpu-001")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "stage 'provision' is not built yet" in output
    # nothing after the failed stage ran
    assert "stage 'base'" not in output

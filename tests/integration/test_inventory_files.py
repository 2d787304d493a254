"""The inventory files as pyinfra loads them (the pyinfra CLI in a subprocess): bad input
is refused whole, with every problem named, before any host is connected to."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def prod_doc() -> dict:
    return yaml.safe_load((ROOT / "inventory/prod.yaml").read_text())


def test_pyinfra_inventory_file_refuses_bad_input_whole(tmp_path, prod_doc):
    """inventory/prod.py raises pyinfra's InventoryError listing every problem; no hosts load."""
    prod_doc["racks"][1]["nodes"][0]["hostname"] = "gpu-001"
    del prod_doc["racks"][1]["nodes"][1]["bmc"]
    inventory_dir = tmp_path / "inventory"
    inventory_dir.mkdir()
    (inventory_dir / "prod.py").write_text((ROOT / "inventory/prod.py").read_text())
    (inventory_dir / "prod.yaml").write_text(yaml.safe_dump(prod_doc))
    result = subprocess.run(
        [sys.executable, "-m", "pyinfra", "--dry", str(inventory_dir / "prod.py"),
         "fact", "server.Hostname"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "invalid inventory" in output
    assert "duplicate hostname 'gpu-001'" in output
    assert "node gpu-018 has no BMC" in output
    assert "Connected" not in output


def test_pyinfra_on_the_lab_inventory_without_a_lab_says_so(tmp_path):
    result = subprocess.run(
        [str(Path(sys.executable).parent / "pyinfra"), "inventory/lab.py", "fact", "server.Os"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"KILN_LAB_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert result.returncode != 0
    assert "no lab state (is the lab up? run: kiln lab up)" in result.stdout + result.stderr

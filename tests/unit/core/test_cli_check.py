"""`kiln check FILE…`: exit 0 when every file is valid, non-zero with every error listed."""

import subprocess
from pathlib import Path

import yaml

from kiln.cli import main

ROOT = Path(__file__).resolve().parents[3]


def test_shipped_files_pass(capsys):
    files = [str(p) for p in sorted((ROOT / "kiln" / "firmware").glob("*.yaml"))]
    assert main(["check", *files, str(ROOT / "inventory/prod.yaml")]) == 0
    assert capsys.readouterr().out.count(": ok") == len(files) + 1


def test_every_error_of_every_file_is_listed(tmp_path, capsys):
    manifest = yaml.safe_load((ROOT / "kiln/firmware/lab.yaml").read_text())
    manifest["sku"] = "bad"
    del manifest["packages"]["nvidia-driver"]["version"]
    del manifest["os"]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(manifest))
    inventory = yaml.safe_load((ROOT / "inventory/prod.yaml").read_text())
    inventory["racks"][0]["nodes"][2]["sku"] = "nope"
    (tmp_path / "inv.yaml").write_text(yaml.safe_dump(inventory))

    code = main(["check", str(tmp_path / "bad.yaml"), str(tmp_path / "inv.yaml"),
                 str(ROOT / "kiln/firmware/lab.yaml")])
    captured = capsys.readouterr()
    assert code == 1
    bad = tmp_path / "bad.yaml"
    assert f"{bad}: packages.nvidia-driver.version: field required" in captured.err
    assert f"{bad}: os: field required" in captured.err
    assert "unknown SKU 'nope'" in captured.err
    assert "lab.yaml: ok" in captured.out


def test_file_that_is_neither(tmp_path, capsys):
    (tmp_path / "x.yaml").write_text("hello: world\n")
    assert main(["check", str(tmp_path / "x.yaml")]) == 1
    assert "neither a manifest" in capsys.readouterr().err


def test_console_script_exit_code(tmp_path):
    (tmp_path / "x.yaml").write_text("sku: [\n")
    kiln = ROOT / ".venv/bin/kiln"
    result = subprocess.run([str(kiln), "check", str(tmp_path / "x.yaml")],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert "not valid YAML" in result.stderr

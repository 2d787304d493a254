"""The gate in a real pyinfra run on @local (in the `gpu` group): a node that passed every
operation is pooled (ledger and pool file) and a rerun changes nothing; a node that fails
an operation is quarantined with the operation and kiln's message, and drained."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from kiln.core.ledger import Ledger, NodeState

BIN = Path(sys.executable).parent

INVENTORY = """\
import os
gpu = [("@local", {"kiln_node": "gpu-017", "kiln_ledger": os.environ["TEST_LEDGER"],
                   "kiln_pool_file": os.environ["TEST_POOL"]})]
"""
DEPLOY = """\
import os
from kiln.core.outcomes import refuse
from kiln.core.runlock import hold_nodes_for_run
from kiln.roles.gate import gate, gate_failures

hold_nodes_for_run("deploy/test.py")
gate_failures()
if os.environ.get("TEST_FAIL") == "kiln":
    refuse(name="Health: single-node checks", message="GPU 3 (0000:9a:00.0): Xid 79: "
           "fallen off the bus")
if os.environ.get("TEST_FAIL") == "command":
    from pyinfra.operations import server

    server.shell(name="NVIDIA: packages", commands=[
        "echo 'E: Version 570.148.08-1 for nvidia-driver-570 was not found' >&2; exit 100"])
gate()
"""


def run(site: Path, *args: str, fail: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "TEST_LEDGER": str(site / "state/kiln.db"),
           "TEST_POOL": str(site / "state/pool.yaml")}
    env.pop("TEST_FAIL", None)
    if fail:
        env["TEST_FAIL"] = fail
    return subprocess.run([str(BIN / "pyinfra"), *args, "inventory.py", "deploy.py"],
                          cwd=site, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=120)


def ledger_of(site: Path) -> tuple[NodeState | None, list[str], str]:
    book = Ledger(site / "state/kiln.db")
    try:
        return (book.state("gpu-017"), [str(t.to_state) for t in book.history("gpu-017")],
                book.reason("gpu-017"))
    finally:
        book.close()


def pool(site: Path) -> dict:
    return yaml.safe_load((site / "state/pool.yaml").read_text())


def test_a_node_that_passed_is_pooled_then_one_that_fails_is_quarantined(tmp_path: Path):
    (tmp_path / "inventory.py").write_text(INVENTORY)
    (tmp_path / "deploy.py").write_text(DEPLOY)

    preview = run(tmp_path, "--dry")
    assert preview.returncode == 0, preview.stdout
    assert not (tmp_path / "state").exists()

    first = run(tmp_path, "-y")
    assert first.returncode == 0, first.stdout
    assert "gate: gpu-017 pooled" in first.stdout
    state, moves, reason = ledger_of(tmp_path)
    assert state == NodeState.POOLED
    assert moves == ["enrolled", "deployed", "configured", "burning-in", "pooled"]
    assert pool(tmp_path)["members"] == ["gpu-017"]

    again = run(tmp_path, "-y")
    assert again.returncode == 0
    # pyinfra's results: one operation, nothing changed.
    assert re.search(r"Grand total\s+1\s+-\s+-\s+1\s", again.stdout), again.stdout
    assert ledger_of(tmp_path)[1] == moves

    failed = run(tmp_path, "-y", fail="kiln")
    assert failed.returncode != 0
    state, moves, reason = ledger_of(tmp_path)
    assert state == NodeState.QUARANTINED and moves[-1] == "quarantined"
    assert reason == ("kiln: Health: single-node checks failed: GPU 3 (0000:9a:00.0): "
                      "Xid 79: fallen off the bus")
    assert pool(tmp_path)["members"] == []
    assert pool(tmp_path)["drained"]["gpu-017"]["reason"] == reason
    assert f"gate: gpu-017 quarantined ({reason})" in failed.stdout

    # The run's report, beside the ledger: the node as the run left it, and its moves.
    reports = sorted((tmp_path / "state/reports").glob("run-*.json"),
                     key=lambda path: int(path.stem.split("-")[1]))
    assert len(reports) == 3  # three runs; the preview wrote none
    report = json.loads(reports[-1].read_text())
    assert report["run"]["result"] == "failed" and report["run"]["deploy"] == "deploy/test.py"
    assert report["counts"] == {"quarantined": 1}
    [node] = report["nodes"]
    assert (node["node"], node["state"], node["reason"]) == ("gpu-017", "quarantined", reason)
    assert [(m["from"], m["to"]) for m in node["moves"]] == [("pooled", "quarantined")]
    assert f"| gpu-017 | quarantined | {reason} |" in reports[-1].with_suffix(".md").read_text()
    first_report = json.loads(reports[0].read_text())
    assert [m["to"] for m in first_report["nodes"][0]["moves"]] == [
        "enrolled", "deployed", "configured", "burning-in", "pooled"]

    # Mended, it comes back only through the gate, in a run it passes.
    back = run(tmp_path, "-y")
    assert back.returncode == 0
    assert ledger_of(tmp_path)[1][-4:] == ["quarantined", "configured", "burning-in", "pooled"]
    assert pool(tmp_path)["members"] == ["gpu-017"] and pool(tmp_path)["drained"] == {}


def test_a_failed_commands_output_is_the_reason(tmp_path: Path):
    (tmp_path / "inventory.py").write_text(INVENTORY)
    (tmp_path / "deploy.py").write_text(DEPLOY)
    failed = run(tmp_path, "-y", fail="command")
    assert failed.returncode != 0
    state, _, reason = ledger_of(tmp_path)
    assert state == NodeState.QUARANTINED
    assert reason == ("kiln: NVIDIA: packages failed: E: Version 570.148.08-1 for "
                      "nvidia-driver-570 was not found"), failed.stdout

"""`kiln nodes` and `kiln nodes NODE`: the fleet and one node's history, from a ledger that
runs wrote (the run lock's run rows, transitions and a burn-in result)."""

from __future__ import annotations

import json

from kiln.cli import main
from kiln.core.checks import CheckResult, Status, Subject
from kiln.core.ledger import Ledger, NodeState, set_current_run

S = NodeState


def written_ledger(path):
    book = Ledger(path)
    run = book.start_run("deploy/bringup.py", "ctl-1", 4242)
    book.lock_nodes(run, ["gpu-001", "gpu-002"])
    book.close()
    set_current_run(path, run)  # as the run lock does: writes without a run id are its
    try:
        book = Ledger(path)
        for node in ("gpu-001", "gpu-002"):
            book.enroll(node)
            for state in (S.DEPLOYING, S.DEPLOYED, S.CONFIGURED, S.BURNING_IN):
                book.transition(node, state, reason=f"to {state}")
        book.record_results([CheckResult("burnin-nccl-single", Subject("gpu-001"), Status.OK,
                                         evidence={"busbw_gbps": 361.4})])
        book.transition("gpu-001", S.POOLED, reason="passed health and burn-in")
        book.transition("gpu-002", S.QUARANTINED, reason="burn-in: GPU 3 wrong results")
    finally:
        set_current_run(path, None)
    book.finish_run(run, "failed")
    book.close()
    return run


def test_the_fleet_table_says_state_reason_busbw_and_last_run(tmp_path, capsys):
    ledger = tmp_path / "kiln.db"
    written_ledger(ledger)
    assert main(["nodes", "--ledger", str(ledger)]) == 0
    out = capsys.readouterr().out
    [one] = [line for line in out.splitlines() if "gpu-001" in line]
    assert "pooled" in one and "361.4 GB/s" in one and "#1 bringup.py failed" in one
    [two] = [line for line in out.splitlines() if "gpu-002" in line]
    assert "quarantined" in two and "wrong results" in two
    assert "1 pooled, 1 quarantined" in out


def test_json_and_one_nodes_history_carry_the_run(tmp_path, capsys):
    ledger = tmp_path / "kiln.db"
    run = written_ledger(ledger)
    assert main(["nodes", "--ledger", str(ledger), "--json"]) == 0
    fleet = {row["node"]: row for row in json.loads(capsys.readouterr().out)}
    assert fleet["gpu-002"]["state"] == "quarantined"
    assert fleet["gpu-002"]["last_busbw_gbps"] is None
    assert fleet["gpu-001"]["last_run"]["pid"] == 4242
    assert main(["nodes", "gpu-002", "--ledger", str(ledger), "--json"]) == 0
    history = json.loads(capsys.readouterr().out)
    assert [h["to"] for h in history] == ["enrolled", "deploying", "deployed", "configured",
                                          "burning-in", "quarantined"]
    assert {h["run"]["id"] for h in history} == {run}
    assert main(["nodes", "gpu-002", "--ledger", str(ledger)]) == 0
    assert "burn-in: GPU 3 wrong results" in capsys.readouterr().out


def test_no_ledger_or_unknown_node_is_said_and_nothing_is_made(tmp_path, capsys):
    missing = tmp_path / "none.db"
    assert main(["nodes", "--ledger", str(missing)]) == 1
    assert "no nodes in the ledger" in capsys.readouterr().err
    assert not missing.exists()
    ledger = tmp_path / "kiln.db"
    written_ledger(ledger)
    assert main(["nodes", "gpu-099", "--ledger", str(ledger)]) == 1
    assert "gpu-099 is not in the ledger" in capsys.readouterr().err

"""The ledger's explicit lifecycle and the file pool."""

import pytest

from kiln.core.errors import KilnError
from kiln.core.ledger import InvalidTransition, Ledger, NodeState
from kiln.roles.pool.file import FilePool

S = NodeState


@pytest.fixture
def ledger(tmp_path):
    book = Ledger(tmp_path / "state" / "kiln.db")
    yield book
    book.close()


def walk(ledger, node, *states):
    for state in states:
        ledger.transition(node, state, reason=f"to {state}")


def test_full_lifecycle_is_recorded_in_order(ledger):
    assert ledger.enroll("gpu-001") is True
    assert ledger.enroll("gpu-001") is False
    walk(ledger, "gpu-001", S.COMMISSIONING, S.READY, S.DEPLOYING, S.DEPLOYED, S.CONFIGURED,
         S.BURNING_IN, S.POOLED)
    assert ledger.state("gpu-001") == S.POOLED
    history = ledger.history("gpu-001")
    assert [t.to_state for t in history] == [S.ENROLLED, S.COMMISSIONING, S.READY, S.DEPLOYING,
                                             S.DEPLOYED, S.CONFIGURED, S.BURNING_IN, S.POOLED]
    assert history[1].from_state == S.ENROLLED
    assert all(a.at <= b.at for a, b in zip(history, history[1:], strict=False))


def test_pool_only_from_burn_in(ledger):
    ledger.enroll("gpu-002")
    walk(ledger, "gpu-002", S.COMMISSIONING, S.READY, S.DEPLOYING, S.DEPLOYED)
    with pytest.raises(InvalidTransition, match="gpu-002: deployed -> pooled is not allowed"):
        ledger.transition("gpu-002", S.POOLED)
    assert ledger.state("gpu-002") == S.DEPLOYED


def test_quarantine_keeps_the_reason(ledger):
    ledger.enroll("gpu-003")
    walk(ledger, "gpu-003", S.COMMISSIONING, S.READY, S.DEPLOYING)
    ledger.transition("gpu-003", S.QUARANTINED, reason="MAAS: Failed deployment")
    assert ledger.reason("gpu-003") == "MAAS: Failed deployment"
    assert ledger.nodes()["gpu-003"] == (S.QUARANTINED, "MAAS: Failed deployment")


def test_same_state_is_not_a_new_transition(ledger):
    ledger.enroll("gpu-004")
    ledger.transition("gpu-004", S.COMMISSIONING)
    assert ledger.transition("gpu-004", S.COMMISSIONING) is None
    assert len(ledger.history("gpu-004")) == 2


def test_unknown_node_is_refused(ledger):
    with pytest.raises(InvalidTransition, match="gpu-404: not enrolled"):
        ledger.transition("gpu-404", S.READY)


def test_ledger_survives_reopen(tmp_path):
    path = tmp_path / "kiln.db"
    first = Ledger(path)
    first.enroll("gpu-005")
    run = first.start_run("bringup")
    first.record_check("gpu-005", "all_reduce_busbw", True, 471.2, run_id=run)
    first.finish_run(run, "ok")
    first.close()
    second = Ledger(path)
    assert second.state("gpu-005") == S.ENROLLED
    assert second.checks("gpu-005") == [("all_reduce_busbw", True, 471.2, "")]
    second.close()


def test_file_pool_add_and_drain(tmp_path):
    pool = FilePool(tmp_path / "pool.yaml")
    assert pool.members() == []
    assert pool.add("gpu-002") is True
    assert pool.add("gpu-001") is True
    assert pool.add("gpu-001") is False
    assert pool.members() == ["gpu-001", "gpu-002"]
    assert pool.drain("gpu-001", "reprovision: replaced motherboard") is True
    assert pool.drain("gpu-001", "kiln: reprovision: replaced motherboard") is False
    assert pool.members() == ["gpu-002"]
    # kiln's reasons carry kiln's prefix: how every backend tells kiln's drains from others'.
    assert pool.drained() == {"gpu-001": "kiln: reprovision: replaced motherboard"}
    # A later kiln reason replaces kiln's earlier one (the newest cause is the one to act on).
    assert pool.drain("gpu-001", "health failed: GPU 3 row-remap failure") is True
    assert pool.drained() == {"gpu-001": "kiln: health failed: GPU 3 row-remap failure"}
    assert pool.add("gpu-001") is True
    assert pool.drained() == {}


def test_drain_needs_a_reason(tmp_path):
    with pytest.raises(KilnError, match="needs a reason"):
        FilePool(tmp_path / "pool.yaml").drain("gpu-001", "")


def test_corrupt_pool_file_is_named(tmp_path):
    path = tmp_path / "pool.yaml"
    path.write_text("members: [\n")
    with pytest.raises(KilnError, match="pool.yaml: pool file is not valid YAML"):
        FilePool(path).members()


# --- runs and node locks (kiln.core.runlock holds nodes through these) -----------------------


def test_a_node_is_held_by_one_unfinished_run_at_a_time(ledger):
    first = ledger.start_run("deploy/bringup.py", "ctl-1", 100)
    second = ledger.start_run("deploy/health.py", "ctl-1", 200)
    assert ledger.lock_nodes(first, ["gpu-001", "gpu-002"]) == {}
    held = ledger.lock_nodes(second, ["gpu-002", "gpu-003"])
    assert list(held) == ["gpu-002"]
    assert (held["gpu-002"].id, held["gpu-002"].pid) == (first, 100)
    assert ledger.locked_nodes() == {"gpu-001": first, "gpu-002": first, "gpu-003": second}
    ledger.finish_run(first, "succeeded")
    assert ledger.locked_nodes() == {"gpu-003": second}
    assert ledger.lock_nodes(second, ["gpu-002"]) == {}
    assert ledger.run(first).result == "succeeded"


def test_dead_runs_of_this_controller_are_interrupted_and_free_their_nodes(ledger):
    dead = ledger.start_run("deploy/bringup.py", "ctl-1", 100)
    alive = ledger.start_run("deploy/health.py", "ctl-1", 200)
    elsewhere = ledger.start_run("deploy/firmware.py", "ctl-2", 100)
    ledger.lock_nodes(dead, ["gpu-001"])
    ledger.lock_nodes(alive, ["gpu-002"])
    ledger.lock_nodes(elsewhere, ["gpu-003"])
    closed = ledger.close_dead_runs("ctl-1", alive=lambda run: run.pid == 200)
    assert [run.id for run in closed] == [dead]
    assert ledger.run(dead).result == "interrupted" and ledger.run(dead).finished_at
    # Another controller's run cannot be seen from here: it keeps its node.
    assert ledger.locked_nodes() == {"gpu-002": alive, "gpu-003": elsewhere}
    assert "pid 100 on ctl-1" in closed[0].describe()


def test_a_version_2_ledger_gains_the_run_columns_in_place(tmp_path):
    import sqlite3

    path = tmp_path / "kiln.db"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, deploy TEXT NOT NULL, "
        "started_at REAL NOT NULL, finished_at REAL, result TEXT);"
        "INSERT INTO runs (deploy, started_at) VALUES ('deploy/bringup.py', 1.0);"
        "PRAGMA user_version = 2;")
    db.close()
    book = Ledger(path)
    try:
        [old] = book.runs()
        assert (old.deploy, old.controller, old.pid, old.result) == (
            "deploy/bringup.py", "", None, None)
        # An unfinished run of an older kiln has no process to look at: it is over.
        assert book.close_dead_runs("", alive=lambda run: True) == [old]
    finally:
        book.close()

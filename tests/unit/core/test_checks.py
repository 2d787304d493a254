"""The one typed check result: statuses, worst-of where an UNKNOWN never hides a CRITICAL,
the message a technician reads, and the ledger that records it (old ledgers too)."""

from __future__ import annotations

import sqlite3

import pytest

from kiln.core.checks import (
    Action,
    CheckResult,
    Combined,
    Peer,
    Remediation,
    Status,
    Subject,
    worst,
)
from kiln.core.ledger import SCHEMA, Ledger, last_passed, last_results

S = Status


def result(status: Status, name: str = "mlx5_0", check: str = "c") -> CheckResult:
    remedy = None if status == S.OK else Remediation(Action.RESEAT, f"reseat {name}")
    problems = () if status == S.OK else (f"{name} is {status}",)
    return CheckResult(check, Subject("gpu-001", "HCA", name), status, problems,
                       {"state": "x"}, remedy)


@pytest.mark.parametrize(("statuses", "expected"), [
    ((), S.OK),
    ((S.OK, S.WARN), S.WARN),
    ((S.WARN, S.UNKNOWN), S.UNKNOWN),
    ((S.UNKNOWN, S.CRITICAL), S.CRITICAL),
    ((S.CRITICAL, S.UNKNOWN), S.CRITICAL),
    ((S.UNKNOWN, S.UNKNOWN, S.CRITICAL, S.OK), S.CRITICAL),
    (("OK", "UNKNOWN"), S.UNKNOWN),
])
def test_worst_of_orders_critical_over_unknown_over_warn_over_ok(statuses, expected):
    assert worst(statuses) == expected


def test_an_unknown_never_hides_a_critical_and_is_reported_beside_it():
    combined = Combined.of([result(S.UNKNOWN, "mlx5_0"), result(S.CRITICAL, "mlx5_3"),
                            result(S.WARN, "mlx5_4"), result(S.OK, "mlx5_5")])
    assert combined.status == S.CRITICAL and not combined.passes
    assert [r.subject.name for r in combined.failures] == ["mlx5_3", "mlx5_0"]
    lines = combined.report()
    assert lines[0].startswith("node gpu-001: HCA mlx5_3: CRITICAL: mlx5_3 is CRITICAL")
    assert lines[1].startswith("could not tell: node gpu-001: HCA mlx5_0: UNKNOWN")
    assert lines[2].startswith("node gpu-001: HCA mlx5_4: WARN")
    assert len(lines) == 3
    alone = Combined.of([result(S.UNKNOWN), result(S.OK, "mlx5_1")])
    assert alone.status == S.UNKNOWN and not alone.passes
    assert alone.report()[0].startswith("node gpu-001: HCA mlx5_0: UNKNOWN")
    assert Combined.of([result(S.WARN)]).passes and Combined.of([]).status == S.OK


def test_the_message_names_node_part_ids_switch_and_the_remediation():
    subject = Subject("gpu-003", "HCA", "mlx5_6", (("port GUID", "946dae0300bad39f"),),
                      Peer("switch", "leaf-rail6", "fc6a1c0300aa0006", "2/1"))
    bad = CheckResult("ufm-fabric", subject, S.CRITICAL, ("switch port is Down",),
                      {"state": "Down"}, Remediation(Action.CHECK_CABLE, "reseat the cable"))
    assert bad.message == ("node gpu-003: HCA mlx5_6 (port GUID 946dae0300bad39f): switch "
                           "leaf-rail6 (GUID fc6a1c0300aa0006) port 2/1: CRITICAL: switch "
                           "port is Down -> check-cable: reseat the cable")
    assert subject.key == "HCA mlx5_6" and Subject("gpu-003").key == "node"
    assert CheckResult("c", Subject("gpu-003"), S.OK).message == "node gpu-003: OK"
    assert S.WARN.passes and not S.UNKNOWN.passes and not S.CRITICAL.passes


def test_the_ledger_records_status_subject_evidence_and_remediation(tmp_path):
    path = tmp_path / "kiln.db"
    assert last_results(path, "gpu-001", "c") == {}  # no ledger: nothing, nothing made
    assert not path.exists()
    book = Ledger(path)
    book.record_results([result(S.OK, "mlx5_0"), result(S.UNKNOWN, "mlx5_1")])
    book.record_result(result(S.CRITICAL, "mlx5_1"))
    assert last_results(path, "gpu-001", "c") == {"HCA mlx5_0": S.OK, "HCA mlx5_1": S.CRITICAL}
    last = book.results("gpu-001", "c")[-1]
    assert (last.subject, last.status, last.remediation, last.evidence) == (
        "HCA mlx5_1", S.CRITICAL, "reseat: reseat mlx5_1", '{"state": "x"}')
    assert last.subject_text == "node gpu-001: HCA mlx5_1"
    assert book.checks("gpu-001")[-1][:2] == ("c", False)
    assert last_passed(path, "gpu-001", "c") is not None
    book.close()


def test_a_version_1_ledger_is_migrated_in_place_and_keeps_its_rows(tmp_path):
    path = tmp_path / "kiln.db"
    db = sqlite3.connect(path)
    db.executescript(SCHEMA)
    db.execute("INSERT INTO checks (node, name, passed, value, detail, at) "
               "VALUES ('gpu-001', 'all_reduce_busbw', 1, 471.2, '', 1.0)")
    db.commit()
    db.close()
    assert last_results(path, "gpu-001", "all_reduce_busbw") == {"": S.OK}  # read as it is
    book = Ledger(path)
    assert book.checks("gpu-001") == [("all_reduce_busbw", True, 471.2, "")]
    [old] = book.results("gpu-001")
    assert old.status == S.OK and old.subject == ""
    book.record_check("gpu-001", "all_reduce_busbw", False, 120.0)
    assert last_results(path, "gpu-001", "all_reduce_busbw") == {"": S.CRITICAL}
    book.close()
    again = Ledger(path)  # opening a migrated ledger changes nothing
    assert len(again.results("gpu-001")) == 2
    again.close()

"""`kiln health NODE`: the ledger's last result per check and part, as a table or JSON,
read without writing anything."""

from __future__ import annotations

import json

from kiln.cli import main
from kiln.core.checks import Action, CheckResult, Remediation, Status, Subject
from kiln.core.ledger import Ledger


def test_kiln_health_prints_problems_first_and_groups_what_is_ok(tmp_path, capsys):
    ledger = tmp_path / "kiln.db"
    book = Ledger(ledger)
    gpu = [CheckResult("gpu-memory", Subject("gpu-017", "GPU", str(i)), Status.OK)
           for i in range(8)]
    bad = CheckResult("gpu-memory", Subject("gpu-017", "GPU", "3", (("PCI", "0000:5d:00.0"),)),
                      Status.CRITICAL, ("row remap pending",), {"pending": True},
                      Remediation(Action.REBOOT, "reset GPU 3"))
    book.record_results(gpu)
    book.record_results([bad, CheckResult("host-time", Subject("gpu-017"), Status.OK)])
    book.close()
    before = ledger.stat().st_mtime_ns

    assert main(["health", "gpu-017", "--ledger", str(ledger)]) == 2  # not all passing
    out = capsys.readouterr().out
    lines = out.splitlines()
    critical = next(i for i, line in enumerate(lines) if "CRITICAL" in line)
    grouped = next(i for i, line in enumerate(lines) if "7 parts" in line)
    assert critical < grouped and "row remap pending" in lines[critical]
    assert "reboot: reset GPU 3" in out and "1 CRITICAL" in out and "8 OK" in out

    assert main(["health", "gpu-017", "--ledger", str(ledger), "--json"]) == 2
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["status"] == "CRITICAL" and rows[0]["evidence"] == {"pending": True}
    assert ledger.stat().st_mtime_ns == before


def test_kiln_health_without_results_says_so(tmp_path, capsys):
    assert main(["health", "gpu-404", "--ledger", str(tmp_path / "none.db")]) == 1
    assert "no health results for node gpu-404" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()

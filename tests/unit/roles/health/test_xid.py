"""kiln's Xid/SXid table (kiln/roles/health/data/xid.yaml) and its verdicts, on the real
kernel-log lines in tests/fixtures/dmesg (real captures: tests/fixtures/README.txt)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import yaml

from kiln.core.checks import Action, Status
from kiln.core.errors import ValidationFailed
from kiln.roles.health.parsers import parse_kernel_log
from kiln.roles.health.xid import (
    TOOLS,
    XID_TABLE,
    classify_sxid,
    classify_xid,
    load_xid_table,
    sxid_fatality,
)

ROOT = Path(__file__).resolve().parents[4]
DMESG = ROOT / "tests" / "fixtures" / "dmesg"
# the codes the tools disagree on (see the table's header)
DISPUTED = (63, 64, 92, 94, 95, 119, 120)
REQUIRED = (13, 31, 43, 45, 48, 61, 62, 63, 64, 68, 69, 74, 79, 92, 94, 95, 109, 119, 120,
            121, 122, 123, 140, 143, *range(144, 151))


def test_the_shipped_table_loads_and_covers_the_h100_codes():
    table = load_xid_table()
    assert table is load_xid_table()  # loaded once
    codes = {e.code for e in table.xids}
    assert set(REQUIRED) <= codes
    assert {12028, 20034, 22013} <= {e.code for e in table.sxids}


def test_the_table_is_package_data():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["kiln"]
    assert "roles/health/data/*.yaml" in globs
    assert XID_TABLE.parent.name == "data" and XID_TABLE.exists()


@pytest.mark.parametrize("code", DISPUTED)
def test_every_disputed_code_says_why(code):
    entry = load_xid_table().xid(code)
    assert entry.disputed
    assert set(entry.tools) >= set(TOOLS)
    assert len(entry.reason) >= 120 and "NVIDIA" in entry.reason
    assert entry.nvidia  # what NVIDIA's catalog says


@pytest.mark.parametrize("code, message", [
    (48, "An uncorrectable double bit error (DBE) has been detected on GPU in the framebuffer"),
    (79, "GPU has fallen off the bus."),
    (95, "Ch 00000008"),
])
def test_dbe_fallen_off_the_bus_and_uncontained_are_critical(code, message):
    verdict = classify_xid(code, message)
    assert verdict.status == Status.CRITICAL and verdict.cls == "hardware"
    assert verdict.remediation.action == Action.REBOOT


@pytest.mark.parametrize("code", [13, 31, 43, 45])
def test_application_xids_warn(code):
    """13, 31, 43 and 45 are a job's own faults (NVIDIA: restart the application, the GPU is
    healthy): not a hardware fault, so the node stays in. WARN, not OK: NVIDIA allows a rare
    hardware or driver cause for 13 and 31, a lone 45 can mean the fabric manager died, and a
    burst of any of them is worth a person's look."""
    verdict = classify_xid(code, "")
    assert (verdict.status, verdict.cls, verdict.remediation) == (
        Status.WARN, "application", None)
    assert verdict.technician


def test_contained_is_a_warning_uncontained_is_not():
    assert classify_xid(94, "Ch 00000008").status == Status.WARN
    assert classify_xid(95, "Ch 00000008").status == Status.CRITICAL


def test_row_remap_event_and_failure():
    event = classify_xid(63, "Row Remapper: New row marked for remapping, reset gpu to activate.")
    assert (event.status, event.cls) == (Status.WARN, "informational")
    failure = classify_xid(64, "Row Remapper Error: (0x00000002eebc4100) - some other reason")
    assert (failure.status, failure.remediation.action, failure.rule) == (
        Status.CRITICAL, Action.REBOOT, None)
    full = classify_xid(64, "Row Remapper Error: (0x00000002eebc4100) - All reserved rows for "
                            "bank are remapped")
    assert (full.status, full.remediation.action) == (Status.CRITICAL, Action.RMA)
    assert full.rule == "All reserved rows for bank are remapped"


def test_gsp_errors_are_a_reset_not_a_part():
    for code in (119, 120):
        verdict = classify_xid(code, "")
        assert (verdict.status, verdict.cls, verdict.remediation.action) == (
            Status.CRITICAL, "reset", Action.REBOOT)


@pytest.mark.parametrize("message, status", [
    ("GPU recovery action changed from 0x0 (None) to 0x1 (GPU Reset Required)", Status.CRITICAL),
    ("GPU recovery action changed from 0x0 (None) to 0x2 (Node Reboot Required)",
     Status.CRITICAL),
    ("GPU recovery action changed from 0x0 (None) to 0x3 (Drain P2P)", Status.CRITICAL),
    ("GPU recovery action changed from 0x0 (None) to 0x4 (Drain and Reset)", Status.CRITICAL),
    ("GPU recovery action changed from 0x1 (GPU Reset Required) to 0x0 (None)", Status.OK),
    ("GPU recovery action changed from 0x0 (None) to 0x7 (Something New)", Status.WARN),
])
def test_xid_154_reads_the_recovery_action(message, status):
    verdict = classify_xid(154, message)
    assert verdict.status == status
    if status == Status.CRITICAL:
        assert verdict.remediation.action == Action.REBOOT
    if status == Status.OK:
        assert verdict.remediation is None


@pytest.mark.parametrize("code", range(144, 151))
def test_nvlink5_xids_read_fatal_from_the_line(code):
    fatal = classify_xid(code, "NETIR_LINK_EVT Fatal XC0 i0 Link 00 (0x025001c6 0x00000000)")
    nonfatal = classify_xid(code, "SAW_MVB Nonfatal XC0 i0 Link 00 (0x00000001 0x00000008)")
    neither = classify_xid(code, "SAW_MVB XC0 i0 Link 00")
    assert (fatal.status, nonfatal.status, neither.status) == (
        Status.CRITICAL, Status.WARN, Status.WARN)
    assert {fatal.cls, nonfatal.cls, neither.cls} == {"nvlink"}


def test_an_unknown_xid_is_a_warning_never_ok():
    verdict = classify_xid(999, "something new")
    assert verdict.status == Status.WARN and not verdict.known
    assert verdict.reason == "Xid 999 is not in kiln's table"
    assert verdict.cls == "unknown"


def test_sxid_fatal_and_non_fatal():
    assert classify_sxid(20034, True, "Link 28 LTSSM Fault Up").status == Status.CRITICAL
    assert classify_sxid(12028, False, "Link 61 egress non-posted PRIV error (First)").status \
        == Status.WARN
    # the driver calling a usually non-fatal code fatal wins
    assert classify_sxid(12028, True, "Link 61 ...").status == Status.CRITICAL
    unknown_fatal = classify_sxid(19999, True, "Link 3 something")
    unknown_nonfatal = classify_sxid(19999, False, "Link 3 something")
    assert (unknown_fatal.status, unknown_nonfatal.status) == (Status.CRITICAL, Status.WARN)
    assert not unknown_fatal.known and unknown_fatal.remediation.action == Action.REBOOT
    # follow-up lines: "Severity 1" is fatal, "Severity 0" non-fatal, "Data {...}" neither
    assert sxid_fatality("Severity 1 Engine instance 00 Sub-engine instance 00") is True
    assert sxid_fatality("Severity 0 Engine instance 00 Sub-engine instance 00") is False
    assert classify_sxid(19999, None, "Severity 1 Engine instance 00").status == Status.CRITICAL
    assert classify_sxid(19999, None, "Data {0x00000000, 0x00000000}").status == Status.WARN


def _events(name: str) -> tuple[list[dict], list[dict]]:
    log = parse_kernel_log((DMESG / name).read_text())
    return log["xids"], log["sxids"]


def test_the_real_kernel_lines():
    xids, _ = _events("xid13-xid43.decode-iso.log")
    assert {(x["xid"], classify_xid(x["xid"], x["message"]).status) for x in xids} == {
        (13, Status.WARN), (43, Status.WARN)}
    xids, _ = _events("dmesg-with-xid-119.log")
    assert {(x["xid"], classify_xid(x["xid"], x["message"]).status) for x in xids} == {
        (119, Status.CRITICAL)}
    xids, sxids = _events("imbue-doctest-lines.log")
    verdicts = {x["xid"]: classify_xid(x["xid"], x["message"]) for x in xids}
    assert verdicts[94].status == Status.WARN
    assert verdicts[64].status == Status.CRITICAL and verdicts[64].remediation.action == \
        Action.RMA  # "All reserved rows for bank are remapped"
    [sxid] = sxids
    fatal = None if sxid["severity"] is None else sxid["severity"] == "Fatal"
    verdict = classify_sxid(sxid["sxid"], fatal, sxid["message"])
    assert (sxid["sxid"], sxid["severity"], verdict.status) == (12028, "Non-fatal", Status.WARN)
    for healthy in ("boot.hgx-h100.550.90.07.decode-iso.log", "kmsg-nvswitch-open.log"):
        assert _events(healthy) == ([], [])


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "xid.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _shipped_data() -> dict:
    return yaml.safe_load(XID_TABLE.read_text())


def test_table_errors_name_the_file_and_entry(tmp_path):
    data = _shipped_data()
    index = next(n for n, e in enumerate(data["xids"]) if e["code"] == 48)
    data["xids"][index]["status"] = "FATAL"
    data["xids"][index]["colour"] = "red"
    with pytest.raises(ValidationFailed) as caught:
        load_xid_table(_write(tmp_path, data))
    problems = caught.value.problems
    assert f"xid.yaml: xids[{index}] (Xid 48): status: " in problems[0]
    assert any(p.startswith(f"xid.yaml: xids[{index}] (Xid 48): colour: unknown field")
               for p in problems)


@pytest.mark.parametrize("change, expected", [
    (lambda e: e.update(action=None), "a CRITICAL entry needs an action"),
    (lambda e: e.update(disputed=True, tools={"imbue": "fails"}),
     "a disputed entry says what each tool does; missing: azure"),
    (lambda e: e.update(rules=[{"match": "(", "status": "WARN", "action": None,
                                "technician": "something to do", "reason": "some reason"}]),
     "not a regular expression"),
    (lambda e: e.update(action="replace-everything"), "action: Input should be"),
])
def test_table_rules_are_checked(tmp_path, change, expected):
    data = _shipped_data()
    index = next(n for n, e in enumerate(data["xids"]) if e["code"] == 79)
    change(data["xids"][index])
    with pytest.raises(ValidationFailed) as caught:
        load_xid_table(_write(tmp_path, data))
    assert any(f"xids[{index}] (Xid 79)" in p and expected in p
               for p in caught.value.problems), caught.value.problems


def test_a_code_listed_twice_is_refused(tmp_path):
    data = _shipped_data()
    data["sxids"].append(dict(data["sxids"][0]))
    with pytest.raises(ValidationFailed, match="sxids: code 10004 is listed twice"):
        load_xid_table(_write(tmp_path, data))

"""dcgmi diag, DCGM 3 and DCGM 4: the parser on every shape, and kiln's judgement of it.

The *.dcgm3* fixtures are real captures; the *.dcgm4*.written.* ones and the documents built
below are written from DCGM 4.2.3's format (tests/fixtures/dcgmi/README.txt says how)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kiln.core.checks import Action, Status
from kiln.core.parsing import ParseError
from kiln.roles.health.dcgm import (
    DCGM_DIAG,
    DCGM_ERRORS,
    SEVERITY_RULES,
    judge_dcgm_diag,
    judge_dcgm_output,
)
from kiln.roles.health.parsers import DCGM_SEVERITY, parse_dcgmi_diag

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures" / "dcgmi"
KEYS = {"format", "shape", "version", "driver_version", "metadata", "entities", "tests",
        "overall", "failed_tests", "failed_gpus", "failed_entities", "runtime_error"}


def read(name: str) -> dict:
    return parse_dcgmi_diag((FIXTURES / name).read_text())


# --- the parser --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["diag-r1.dcgm3.t4.pass.json", "diag-r2.dcgm3.t4.pass.json",
                                  "diag-r3.dcgm3.t4.pass.json",
                                  "diag-r2.dcgm3.3.3.a100x8.pass.txt"])
def test_real_dcgm3_captures_keep_their_shape(name):
    parsed = read(name)
    assert set(parsed) == KEYS
    assert parsed["shape"] == "dcgm3" and parsed["overall"] == "Pass"
    assert parsed["failed_gpus"] == [] and parsed["failed_entities"] == []
    for test in parsed["tests"]:
        assert {"category", "name", "status", "results", "warnings", "info"} <= set(test)
        for res in test["results"]:
            assert {"status", "gpus", "all_gpus"} <= set(res)
    judged = judge_dcgm_diag("gpu-001", parsed, 3)
    assert [(r.check, r.subject.key, r.status) for r in judged] == [
        (DCGM_DIAG, "node", Status.OK)]


def test_dcgm4_json_reads_entities_results_and_warnings():
    parsed = read("diag-r3-j.dcgm4.h100x8.written.json")
    assert set(parsed) == KEYS
    assert (parsed["format"], parsed["shape"]) == ("json", "dcgm4")
    assert (parsed["version"], parsed["driver_version"]) == ("4.2.3", "570.148.08")
    assert parsed["metadata"] == {"driver_version_detected": "570.148.08", "version": "4.2.3"}
    assert parsed["entities"][3] == {"group": "GPU", "group_id": 1, "id": 3,
                                     "serial": "1654923008012", "device_id": "2330"}
    assert [(t["category"], t["name"]) for t in parsed["tests"]] == [
        ("Deployment", "software"), ("Hardware", "memory"), ("Hardware", "diagnostic"),
        ("Hardware", "nvbandwidth"), ("Integration", "pcie"), ("Stress", "memory_bandwidth"),
        ("Stress", "targeted_stress"), ("Stress", "targeted_power")]
    assert parsed["overall"] == "Fail"
    assert parsed["failed_tests"] == ["memory", "nvbandwidth", "pcie", "memory_bandwidth",
                                      "targeted_stress"]
    # GPUs with a "Fail" result, whatever DCGM rated the error (0: MONITOR, 1: TRIAGE)
    assert parsed["failed_gpus"] == [0, 1, 3, 6]
    memory = parsed["tests"][1]
    gpu3 = memory["results"][3]
    assert (gpu3["status"], gpu3["gpu"], gpu3["entity"], gpu3["gpus"]) == (
        "Fail", 3, {"group": "GPU", "group_id": 1, "id": 3}, [3])
    assert gpu3["warnings"] == [{
        "message": "CUDA APIs have indicated that a double-bit ECC error has occured on GPU 3. "
                   "Run a field diagnostic on the GPU.",
        "error_id": 57, "category": 10, "category_name": "HARDWARE_MEMORY",
        "severity": 2, "severity_name": "ISOLATE"}]
    assert memory["summary"] == {"status": "Fail", "warnings": [], "info": [
        "A DBE occurred, CUDA error containment reported issue."]}
    assert memory["warnings"] == [gpu3["warnings"][0]["message"]]
    assert memory["results"][0]["info"] == ["Allocated 82649582403 bytes (97.3%)"]
    # an error about no one GPU sits in the test's summary
    nvbandwidth = parsed["tests"][3]
    assert all(r["status"] == "Pass" for r in nvbandwidth["results"])
    assert nvbandwidth["status"] == "Fail"
    [detail] = nvbandwidth["warning_details"]
    assert (detail["entity"], detail["gpu"], detail["error_id"], detail["severity_name"]) == (
        None, None, 44, "TRIAGE")


def test_dcgm4_table_reads_entity_rows_and_joins_45_character_chunks():
    parsed = read("diag-r2.dcgm4.h100x8.pcie-fail.written.txt")
    assert (parsed["format"], parsed["shape"], parsed["version"]) == ("text", "dcgm4", "4.2.3")
    assert parsed["failed_tests"] == ["pcie"] and parsed["failed_gpus"] == [6]
    pcie = parsed["tests"][2]
    assert [r["gpu"] for r in pcie["results"]] == list(range(8))
    assert pcie["results"][6]["warnings"][0]["message"] == (
        "GPU 6 is running at PCI link width 8X, which is below the minimum allowed link "
        "generation of 16 (parameter 'min_pci_width') Check DCGM and system configuration. "
        "This error may be eliminated with an updated configuration.")
    # a chunk may start with the message's own space (" status 1'"): kept, not doubled
    assert pcie["summary"]["warnings"][0]["message"] == (
        "There was an internal error during the test: 'A child process (20417) exited with "
        "non-zero status 1' Check DCGM and system logs for errors. Reset GPU. Restart DCGM. "
        "Rerun diagnostics.")
    assert pcie["results"][6]["warnings"][0]["severity"] is None  # the table gives none


def test_dcgm4_table_with_skipped_tests():
    parsed = read("diag-r2.dcgm4.h100x8.gpu5-remap-pending.written.txt")
    assert [(t["name"], t["status"]) for t in parsed["tests"]] == [
        ("software", "Fail"), ("memory", "Skip"), ("pcie", "Skip")]
    assert parsed["failed_gpus"] == [5]
    assert parsed["tests"][1]["results"] == []


def test_dcgm4_table_and_json_say_the_same():
    """The written table and JSON of the same PCIe failure agree on tests and warnings."""
    table = read("diag-r2.dcgm4.h100x8.pcie-fail.written.txt")
    doc = read("diag-r3-j.dcgm4.h100x8.written.json")
    pcie_t = next(t for t in table["tests"] if t["name"] == "pcie")
    pcie_j = next(t for t in doc["tests"] if t["name"] == "pcie")
    assert pcie_t["results"][6]["warnings"][0]["message"] == \
        pcie_j["results"][6]["warnings"][0]["message"]


def _doc(*warnings: dict, status: str = "Fail", group: str = "GPU", group_id: int = 1,
         entity_id: int = 0, summary: dict | None = None) -> dict:
    result = {"entity_group": group, "entity_group_id": group_id, "entity_id": entity_id,
              "status": status}
    if warnings:
        result["warnings"] = list(warnings)
    test = {"name": "memory", "results": [result], "test_summary": summary or {"status": status}}
    return {"DCGM Diagnostic": {"test_categories": [{"category": "Hardware", "tests": [test]}]},
            "entity_groups": [{"entities": [{"device_id": "2330", "entity_id": entity_id,
                                             "serial_num": "1654923007121"}],
                               "entity_group": group, "entity_group_id": group_id}],
            "metadata": {"Driver Version Detected": "570.148.08", "version": "4.2.3"}}


def _warning(severity: int, error_id: int = 57, category: int = 10) -> dict:
    return {"error_category": category, "error_id": error_id, "error_severity": severity,
            "warning": f"an error of severity {severity}"}


@pytest.mark.parametrize("severity, name", sorted(DCGM_SEVERITY.items()))
def test_every_severity_is_named(severity, name):
    parsed = parse_dcgmi_diag(json.dumps(_doc(_warning(severity))))
    [warning] = parsed["tests"][0]["results"][0]["warnings"]
    assert (warning["severity"], warning["severity_name"]) == (severity, name)


def test_dcgm_severities_are_dcgms():
    # dcgmErrorSeverity_t in DCGM 4.2.3's dcgmlib/dcgm_errors.h
    assert DCGM_SEVERITY == {0: "NONE", 1: "MONITOR", 2: "ISOLATE", 3: "UNKNOWN", 4: "TRIAGE",
                             5: "CONFIG", 6: "RESET"}
    assert set(SEVERITY_RULES) == set(DCGM_SEVERITY) | {None}
    assert DCGM_ERRORS[85] == "DCGM_FR_PENDING_ROW_REMAP" and DCGM_ERRORS[118] == \
        "DCGM_FR_SRAM_THRESHOLD"


def test_an_unknown_severity_is_kept():
    parsed = parse_dcgmi_diag(json.dumps(_doc(_warning(9))))
    [warning] = parsed["tests"][0]["results"][0]["warnings"]
    assert (warning["severity"], warning["severity_name"]) == (9, "UNRECOGNISED(9)")
    [result] = judge_dcgm_diag("gpu-001", parsed, 2)
    assert result.status == Status.UNKNOWN
    assert "UNRECOGNISED(9)" in result.problems[0]


def test_runtime_error_and_garbage():
    doc = {"DCGM Diagnostic": {"runtime_error": "Error: Unable to complete diagnostic for group "
                                                "0. Return: (-30) ", "version": "4.2.3"}}
    parsed = parse_dcgmi_diag(json.dumps(doc, indent="\t") + "\n")
    assert (parsed["shape"], parsed["overall"], parsed["version"]) == ("dcgm4", "Error", "4.2.3")
    assert parsed["runtime_error"].startswith("Error: Unable to complete diagnostic")
    [result] = judge_dcgm_diag("gpu-001", parsed, 3)
    assert result.status == Status.UNKNOWN and result.subject.key == "node"
    assert result.problems[0].startswith("DCGM could not run: Error: Unable to complete")
    with pytest.raises(ParseError, match="line 1: neither 'DCGM GPU Diagnostic'"):
        parse_dcgmi_diag('{"something": {}}')
    with pytest.raises(ParseError, match="holds neither test_categories nor runtime_error"):
        parse_dcgmi_diag('{"DCGM Diagnostic": {}}')


def test_non_gpu_entities_are_kept_but_not_failed_gpus():
    doc = _doc(_warning(2, error_id=95, category=7), group="CPU", group_id=7, entity_id=0)
    parsed = parse_dcgmi_diag(json.dumps(doc))
    assert parsed["failed_gpus"] == []
    assert parsed["failed_entities"] == [{"group": "CPU", "group_id": 7, "id": 0}]
    assert parsed["entities"] == [{"group": "CPU", "group_id": 7, "id": 0,
                                   "serial": "1654923007121", "device_id": "2330"}]
    [result] = judge_dcgm_diag("gpu-001", parsed, 3)
    assert (result.subject.part, result.subject.name, result.status) == (
        "CPU", "0", Status.CRITICAL)


# --- the judge ---------------------------------------------------------------------------------

def test_judge_the_written_dcgm4_run():
    results = judge_dcgm_diag("gpu-001", read("diag-r3-j.dcgm4.h100x8.written.json"), 3)
    by_key = {r.subject.key: r for r in results}
    assert sorted(by_key) == ["GPU 0", "GPU 1", "GPU 3", "GPU 6", "node"]
    assert all(r.check == DCGM_DIAG for r in results)
    # ISOLATE: drain and RMA
    gpu3 = by_key["GPU 3"]
    assert gpu3.status == Status.CRITICAL and gpu3.remediation.action == Action.RMA
    assert gpu3.subject.ids == (("serial", "1654923008012"),)
    assert gpu3.evidence["findings"] == [{
        "test": "memory", "category": "Hardware", "status": "Fail",
        "message": "CUDA APIs have indicated that a double-bit ECC error has occured on GPU 3. "
                   "Run a field diagnostic on the GPU.",
        "error_id": 57, "error": "DCGM_FR_CUDA_DBE", "severity": 2, "severity_name": "ISOLATE",
        "error_category": "HARDWARE_MEMORY"}]
    assert gpu3.evidence["dcgm_version"] == "4.2.3" and gpu3.evidence["level"] == 3
    # CONFIG, but PCIe width: a seating fault on an HGX board
    gpu6 = by_key["GPU 6"]
    assert gpu6.status == Status.CRITICAL and gpu6.remediation.action == Action.RESEAT
    # TRIAGE and MONITOR: reported, the node goes on
    assert by_key["GPU 1"].status == Status.WARN
    assert by_key["GPU 1"].remediation.action == Action.RETRY
    assert by_key["GPU 0"].status == Status.WARN and by_key["GPU 0"].remediation is None
    assert "DCGM_FR_CLOCKS_EVENT_THERMAL, severity MONITOR" in by_key["GPU 0"].problems[0]
    # the nvbandwidth error about no one GPU: the node's, TRIAGE
    assert by_key["node"].status == Status.WARN
    assert by_key["node"].evidence["findings"][0]["test"] == "nvbandwidth"


@pytest.mark.parametrize("severity, status, action", [
    (0, Status.CRITICAL, Action.REBOOT),
    (1, Status.WARN, None),
    (2, Status.CRITICAL, Action.RMA),
    (3, Status.UNKNOWN, Action.RETRY),
    (4, Status.WARN, Action.RETRY),
    (5, Status.CRITICAL, Action.RECONFIGURE),
    (6, Status.CRITICAL, Action.REBOOT),
])
def test_judge_each_severity(severity, status, action):
    parsed = parse_dcgmi_diag(json.dumps(_doc(_warning(severity, error_id=29))))
    [result] = judge_dcgm_diag("gpu-001", parsed, 2)
    assert (result.subject.key, result.status) == ("GPU 0", status)
    assert (result.remediation.action if result.remediation else None) == action
    assert result.evidence["findings"][0]["severity"] == severity


def test_judge_a_warning_on_a_passing_result_is_a_warning():
    parsed = parse_dcgmi_diag(json.dumps(_doc(_warning(2), status="Pass")))
    [result] = judge_dcgm_diag("gpu-001", parsed, 2)
    assert result.status == Status.WARN


def test_judge_the_worst_finding_leads():
    parsed = parse_dcgmi_diag(json.dumps(_doc(_warning(4), _warning(6, error_id=85),
                                              _warning(2, error_id=80))))
    [result] = judge_dcgm_diag("gpu-001", parsed, 2)
    assert result.status == Status.CRITICAL and result.remediation.action == Action.RMA
    assert len(result.problems) == 3


def test_judge_dcgm3_failures_without_severity():
    text = read("diag-r3.h100x8.gpu3-fail.txt")
    [gpu3] = judge_dcgm_diag("gpu-001", text, 3)
    assert (gpu3.subject.key, gpu3.status) == ("GPU 3", Status.CRITICAL)
    assert [f["test"] for f in gpu3.evidence["findings"]] == ["GPU Memory", "Targeted Stress"]
    assert gpu3.evidence["findings"][0]["message"].startswith("GPU 3 Error using CUDA API")
    doc = read("diag-r3-j.h100x8.gpu3-fail.json")
    [gpu3] = judge_dcgm_diag("gpu-001", doc, 3)
    assert (gpu3.subject.key, gpu3.status) == ("GPU 3", Status.CRITICAL)


def test_judge_a_dcgm4_table_warn_row():
    """DCGM 4's table prints a warning-rated GPU result "Fail"; the test's own row says
    "Warn" (dcgmi/Diag.cpp: only the test row shows Warn)."""
    head = (FIXTURES / "diag-r2.dcgm4.h100x8.pcie-fail.written.txt").read_text().splitlines()[:9]
    rows = ["| targeted_stress           | Warn                                           |",
            "|                           | GPU0: Fail                                     |",
            "| Warning: GPU0             | Clocks are being optimized for GPU 0 because   |",
            "|                           | of thermal performance                         |",
            "+---------------------------+------------------------------------------------+"]
    head[8] = "+-----  Stress  ------------+------------------------------------------------+"
    parsed = parse_dcgmi_diag("\n".join(head + rows) + "\n")
    assert parsed["tests"][0]["results"][0]["status"] == "Fail"  # as printed
    [result] = judge_dcgm_diag("gpu-001", parsed, 3)
    assert (result.subject.key, result.status) == ("GPU 0", Status.WARN)
    assert "because of thermal performance" in result.problems[0]


def test_judge_nothing_ran():
    doc = _doc(status="Skip")
    doc["DCGM Diagnostic"]["test_categories"][0]["tests"][0] = {
        "name": "memory", "test_summary": {"status": "Skip"}}
    [result] = judge_dcgm_diag("gpu-001", parse_dcgmi_diag(json.dumps(doc)), 2)
    assert result.status == Status.UNKNOWN and "every test was skipped" in result.problems[0]
    doc["DCGM Diagnostic"]["test_categories"] = []
    [result] = judge_dcgm_diag("gpu-001", parse_dcgmi_diag(json.dumps(doc)), 2)
    assert result.status == Status.UNKNOWN and "no test results" in result.problems[0]


def test_judge_nv_hostengine_not_running():
    text = ("Error: unable to establish a connection to the specified host: localhost\n"
            "Error: Unable to connect to host engine. Host engine connection "
            "invalid/disconnected.\n")
    [result] = judge_dcgm_output("gpu-001", text, 3)
    assert result.status == Status.UNKNOWN and result.subject.key == "node"
    assert "nv-hostengine" in result.problems[0]
    assert "systemctl start nvidia-dcgm" in result.remediation.detail
    ok = judge_dcgm_output("gpu-001", (FIXTURES / "diag-r1.dcgm3.t4.pass.json").read_text(), 1)
    assert [r.status for r in ok] == [Status.OK]

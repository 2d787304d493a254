"""`dcgmi diag`, judged: what parse_dcgmi_diag read, as kiln's check results.

    judge_dcgm_diag(node, parsed, level) -> [CheckResult]      check "dcgm-diag"

One result per GPU (or other DCGM entity: a CPU, an NVSwitch) that DCGM reported a failure
or a warning for; one for the node when a test failed with an error about no one entity; a
node-level OK when every test ran and passed; a node-level UNKNOWN when DCGM could not run
(runtime_error, nothing ran, nv-hostengine not answering: see judge_dcgm_output).

How bad a finding is comes from DCGM's own error severity (dcgmErrorSeverity_t), not from
the "Fail" beside it: DCGM 4 prints "Fail" for every result it rates a warning too. DCGM 3
JSON and the text tables give no severity; their Fail is CRITICAL and their Warn a WARN.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kiln.core.checks import Action, CheckResult, Remediation, Status, Subject, worst
from kiln.core.parsing import ParseError
from kiln.roles.health.parsers import parse_dcgmi_diag, severity_name

DCGM_DIAG = "dcgm-diag"


@dataclass(frozen=True)
class Rule:
    status: Status
    remediation: Remediation | None


# DCGM's severity -> kiln's verdict. The severities are dcgmErrorSeverity_t's
# (dcgmlib/dcgm_errors.h); the comment on each says why kiln chose what it did.
SEVERITY_RULES: dict[int | None, Rule] = {
    # ISOLATE: DCGM's "cannot perform workload, GPU should be isolated" (DBEs, row-remap
    # failure, memory mismatch, uncontained Xid 95, NVLink errors over threshold). The part
    # is bad: keep the node out and send the GPU back; NVIDIA's RMA process wants the field
    # diagnostic's log, so it is named.
    2: Rule(Status.CRITICAL, Remediation(
        Action.RMA, "drain the node; run NVIDIA's field diagnostic on this GPU and open an "
        "RMA with its log (DCGM rates the error ISOLATE: the GPU cannot take work)")),
    # RESET: DCGM's "drain and reset GPU" (pending row remaps, pending page retirements,
    # graphics processes left on the GPU). A reset clears it (a pending row remap takes
    # effect then); only a second failure after the reset points at the part.
    6: Rule(Status.CRITICAL, Remediation(
        Action.REBOOT, "drain the node, reset the GPU (nvidia-smi -r -i N) or reboot the node, "
        "then run dcgmi diag again; the same failure after the reset is an RMA")),
    # CONFIG: a setting is wrong (persistence mode off, ECC off, a test disabled, PCIe width
    # or generation below the parameter). The node is not fit until it is fixed, and kiln's
    # own stages own those settings: fix the setting, run the stage again. PCIe width and
    # generation are overridden below: on an HGX board no setting narrows a link.
    5: Rule(Status.CRITICAL, Remediation(
        Action.RECONFIGURE, "fix the setting DCGM names (kiln's nvidia stage sets persistence "
        "mode and ECC), then run the health stage again")),
    # TRIAGE: DCGM cannot say whether the GPU is at fault (internal errors, CUDA API failures,
    # bandwidth or stress below target, an Xid seen during the test). Reported, not failed:
    # kiln's burn-in measures the performance side against the fleet, and a rerun tells a
    # transient from a fault.
    4: Rule(Status.WARN, Remediation(
        Action.RETRY, "read DCGM's message and the kernel log; run dcgmi diag again, and if "
        "the same GPU fails the same way, run the field diagnostic on it")),
    # MONITOR: DCGM's "can perform workload, but needs to be monitored" (single-bit ECC rates,
    # clock events, non-fatal NVSwitch errors): reported, the node stays in.
    1: Rule(Status.WARN, None),
    # UNKNOWN: DCGM does not recognise its own error code: kiln cannot tell either.
    3: Rule(Status.UNKNOWN, Remediation(
        Action.RETRY, "DCGM did not recognise the error; read its message and the DCGM log "
        "(/var/log/nvidia-dcgm/), then run dcgmi diag again")),
    # NONE on a failed result: DCGM failed the test and rated the error nothing. A failure is
    # a failure; a reset and a rerun tell whether it stays.
    0: Rule(Status.CRITICAL, Remediation(
        Action.REBOOT, "DCGM failed the test without rating the error: reset the GPU and run "
        "dcgmi diag again; a second failure is an RMA")),
    # No severity at all (DCGM 3 JSON, the text tables): the Fail is all there is to go on.
    None: Rule(Status.CRITICAL, Remediation(
        Action.REBOOT, "DCGM gave no severity: read its message, reset the GPU and run "
        "dcgmi diag again; a second failure on the same GPU is an RMA")),
}

# A severity DCGM 4.2.3 does not define (a newer DCGM's): kept and named in the evidence,
# judged "could not tell" rather than guessed at.
UNRECOGNISED_SEVERITY = Rule(Status.UNKNOWN, Remediation(
    Action.RETRY, "DCGM rated the error with a severity kiln does not know; read DCGM's "
    "message and check kiln's DCGM version pin"))

# Error ids whose DCGM severity sends a technician to the wrong place.
ERROR_RULES: dict[int, Rule] = {
    # DCGM_FR_PCIE_GENERATION (45) and DCGM_FR_PCIE_WIDTH (46) are CONFIG in DCGM: on a
    # workstation a BIOS slot setting can cause them. On an HGX baseboard nothing
    # configurable narrows a GPU's link; a x8 or Gen3 link is a seating, riser or retimer
    # fault.
    45: Rule(Status.CRITICAL, Remediation(
        Action.RESEAT, "the GPU's PCIe link trained below its generation: reseat the GPU tray "
        "and check the PCIe retimer/switch board; RMA if it trains low again")),
    46: Rule(Status.CRITICAL, Remediation(
        Action.RESEAT, "the GPU's PCIe link trained narrower than x16: reseat the GPU tray and "
        "check the PCIe retimer/switch board; RMA if it trains narrow again")),
}

# dcgmError_t (dcgmlib/dcgm_errors.h, DCGM 4.2.3): the ids dcgmi prints as error_id, named
# in the evidence so a person can look them up.
_ERROR_NAMES = (
    "OK UNKNOWN UNRECOGNIZED PCI_REPLAY_RATE VOLATILE_DBE_DETECTED VOLATILE_SBE_DETECTED "
    "PENDING_PAGE_RETIREMENTS RETIRED_PAGES_LIMIT RETIRED_PAGES_DBE_LIMIT CORRUPT_INFOROM "
    "CLOCKS_EVENT_THERMAL POWER_UNREADABLE CLOCKS_EVENT_POWER NVLINK_ERROR_THRESHOLD "
    "NVLINK_DOWN NVSWITCH_FATAL_ERROR NVSWITCH_NON_FATAL_ERROR NVSWITCH_DOWN NO_ACCESS_TO_FILE "
    "NVML_API DEVICE_COUNT_MISMATCH BAD_PARAMETER CANNOT_OPEN_LIB DENYLISTED_DRIVER "
    "NVML_LIB_BAD GRAPHICS_PROCESSES HOSTENGINE_CONN FIELD_QUERY BAD_CUDA_ENV PERSISTENCE_MODE "
    "LOW_BANDWIDTH HIGH_LATENCY CANNOT_GET_FIELD_TAG FIELD_VIOLATION FIELD_THRESHOLD "
    "FIELD_VIOLATION_DBL FIELD_THRESHOLD_DBL UNSUPPORTED_FIELD_TYPE FIELD_THRESHOLD_TS "
    "FIELD_THRESHOLD_TS_DBL THERMAL_VIOLATIONS THERMAL_VIOLATIONS_TS TEMP_VIOLATION "
    "CLOCKS_EVENT_VIOLATION INTERNAL PCIE_GENERATION PCIE_WIDTH ABORTED TEST_DISABLED "
    "CANNOT_GET_STAT STRESS_LEVEL CUDA_API FAULTY_MEMORY CANNOT_SET_WATCHES CUDA_UNBOUND "
    "ECC_DISABLED MEMORY_ALLOC CUDA_DBE MEMORY_MISMATCH CUDA_DEVICE ECC_UNSUPPORTED ECC_PENDING "
    "MEMORY_BANDWIDTH TARGET_POWER API_FAIL API_FAIL_GPU CUDA_CONTEXT DCGM_API CONCURRENT_GPUS "
    "TOO_MANY_ERRORS NVLINK_CRC_ERROR_THRESHOLD NVLINK_ERROR_CRITICAL ENFORCED_POWER_LIMIT "
    "MEMORY_ALLOC_HOST GPU_OP_MODE NO_MEMORY_CLOCKS NO_GRAPHICS_CLOCKS HAD_TO_RESTORE_STATE "
    "L1TAG_UNSUPPORTED L1TAG_MISCOMPARE ROW_REMAP_FAILURE UNCONTAINED_ERROR EMPTY_GPU_LIST "
    "DBE_PENDING_PAGE_RETIREMENTS UNCORRECTABLE_ROW_REMAP PENDING_ROW_REMAP "
    "BROKEN_P2P_MEMORY_DEVICE BROKEN_P2P_WRITER_DEVICE NVSWITCH_NVLINK_DOWN "
    "EUD_BINARY_PERMISSIONS EUD_NON_ROOT_USER EUD_SPAWN_FAILURE EUD_TIMEOUT EUD_ZOMBIE "
    "EUD_NON_ZERO_EXIT_CODE EUD_TEST_FAILED FILE_CREATE_PERMISSIONS PAUSE_RESUME_FAILED "
    "PCIE_H_REPLAY_VIOLATION GPU_EXPECTED_NVLINKS_UP NVSWITCH_EXPECTED_NVLINKS_UP XID_ERROR "
    "SBE_VIOLATION DBE_VIOLATION PCIE_REPLAY_VIOLATION SBE_THRESHOLD_VIOLATION "
    "DBE_THRESHOLD_VIOLATION PCIE_REPLAY_THRESHOLD_VIOLATION CUDA_FM_NOT_INITIALIZED "
    "SXID_ERROR GFLOPS_THRESHOLD_VIOLATION NAN_VALUE FABRIC_MANAGER_TRAINING_ERROR "
    "BROKEN_P2P_PCIE_MEMORY_DEVICE BROKEN_P2P_PCIE_WRITER_DEVICE BROKEN_P2P_NVLINK_MEMORY_DEVICE "
    "BROKEN_P2P_NVLINK_WRITER_DEVICE TEST_SKIPPED SRAM_THRESHOLD"
).split()
DCGM_ERRORS: dict[int, str] = {n: f"DCGM_FR_{name}" for n, name in enumerate(_ERROR_NAMES)}

# What a DCGM entity group is called on a result's subject.
_PART = {"GPU": "GPU", "Switch": "NVSwitch", "CPU": "CPU", "CPU_CORE": "CPU core",
         "GPU_I": "GPU instance", "GPU_CI": "GPU compute instance", "LINK": "NVLink",
         "vGPU": "vGPU"}
_BLANK_SERIALS = {"", "N/A", "<<<NULL>>>", "<<<NOT_SUPPORTED>>>", "<<<NOT_FOUND>>>",
                  "<<<NOT_PERMISSIONED>>>"}


def rule_for(warning: Mapping[str, Any]) -> Rule:
    """kiln's verdict on one DCGM warning (see SEVERITY_RULES and ERROR_RULES)."""
    error_id = warning.get("error_id")
    if error_id in ERROR_RULES:
        return ERROR_RULES[error_id]
    severity = warning.get("severity")
    if severity in SEVERITY_RULES:
        return SEVERITY_RULES[severity]
    return UNRECOGNISED_SEVERITY


@dataclass
class _Findings:
    entity: dict[str, Any] | None  # None: the node (errors about no one entity)
    items: list[dict[str, Any]]
    rules: list[Rule]


def judge_dcgm_diag(node: str, parsed: Mapping[str, Any], level: int) -> list[CheckResult]:
    """kiln's check results for one `dcgmi diag -r level` read (parse_dcgmi_diag's dict)."""
    version = parsed.get("version")
    base = {"dcgm_version": version, "level": level, "format": parsed.get("format"),
            "shape": parsed.get("shape")}
    tests = parsed.get("tests") or []
    if parsed.get("runtime_error") and not tests:
        return [could_not_run(node, str(parsed["runtime_error"]), base)]
    if not tests:
        return [could_not_run(node, "dcgmi diag printed no test results", base)]
    found: dict[str, _Findings] = {}
    for test in tests:
        for res in test.get("results") or []:
            _judge_result(found, test, res)
        summary = test.get("summary")
        if summary:
            _judge_summary(found, test, summary)
        elif test.get("warnings") and not any(r.get("warnings") for r in test["results"]):
            # DCGM 3's table: warnings under a test, not said to be about one GPU
            _judge_unattributed(found, test)
    serials = {(e.get("group"), e.get("id")): e.get("serial")
               for e in parsed.get("entities") or []}
    results = [_result(node, findings, serials, base) for _, findings in sorted(
        found.items(), key=lambda item: _order(item[1].entity))]
    ran = [t for t in tests if t.get("status") != "Skip"]
    if not ran:
        results.append(could_not_run(
            node, "every test was skipped: nothing ran (" + ", ".join(
                str(t.get("name")) for t in tests) + ")", base))
    if not results:
        results.append(CheckResult(DCGM_DIAG, Subject(node), Status.OK, (), {
            **base, "tests": {str(t.get("name")): t.get("status") for t in tests}}))
    return results


def judge_dcgm_output(node: str, text: str, level: int) -> list[CheckResult]:
    """judge_dcgm_diag on dcgmi's raw output; what dcgmi prints when it cannot reach
    nv-hostengine (an error line, not a result) is an UNKNOWN saying so."""
    try:
        parsed = parse_dcgmi_diag(text)
    except ParseError as exc:
        base = {"level": level, "output": text[-2000:]}
        if "host engine" in text.lower() or "hostengine" in text.lower():
            return [could_not_run(node, f"dcgmi could not reach nv-hostengine: {exc}", base,
                                  Remediation(Action.RETRY, "start nv-hostengine "
                                              "(systemctl start nvidia-dcgm) and run the "
                                              "health stage again"))]
        return [could_not_run(node, f"dcgmi diag output not understood: {exc}", base)]
    return judge_dcgm_diag(node, parsed, level)


def could_not_run(node: str, why: str, evidence: Mapping[str, Any],
                  remediation: Remediation | None = None) -> CheckResult:
    if remediation is None and "host engine" in why.lower():
        remediation = Remediation(Action.RETRY, "start nv-hostengine (systemctl start "
                                  "nvidia-dcgm) and run the health stage again")
    return CheckResult(DCGM_DIAG, Subject(node), Status.UNKNOWN, (f"DCGM could not run: {why}",),
                       dict(evidence), remediation or Remediation(
                           Action.RETRY, "read the error, fix DCGM (nv-hostengine, the "
                           "driver, the DCGM version) and run the health stage again"))


def _key(entity: dict[str, Any] | None) -> str:
    return "node" if entity is None else f"{entity.get('group')}:{entity.get('id')}"


def _order(entity: dict[str, Any] | None) -> tuple[int, str, int]:
    if entity is None:
        return (0, "", 0)
    return (1 if entity.get("group") == "GPU" else 2, str(entity.get("group")),
            entity.get("id") if isinstance(entity.get("id"), int) else -1)


def _add(found: dict[str, _Findings], entity: dict[str, Any] | None, item: dict[str, Any],
         rule: Rule) -> None:
    findings = found.setdefault(_key(entity), _Findings(entity, [], []))
    findings.items.append(item)
    findings.rules.append(rule)


def _item(test: Mapping[str, Any], status: str,
          warning: Mapping[str, Any] | None) -> dict[str, Any]:
    item: dict[str, Any] = {"test": test.get("name"), "category": test.get("category"),
                            "status": status}
    if warning is not None:
        error_id = warning.get("error_id")
        item.update({"message": warning.get("message"), "error_id": error_id,
                     "error": DCGM_ERRORS.get(error_id) if error_id is not None else None,
                     "severity": warning.get("severity"),
                     "severity_name": warning.get("severity_name")
                     or severity_name(warning.get("severity")),
                     "error_category": warning.get("category_name")})
    return item


def _entities(res: Mapping[str, Any]) -> list[dict[str, Any] | None]:
    entity = res.get("entity")
    if entity is not None:
        return [entity]
    return [{"group": "GPU", "group_id": 1, "id": g} for g in res.get("gpus") or []]


def _judge_result(found: dict[str, _Findings], test: Mapping[str, Any],
                  res: Mapping[str, Any]) -> None:
    status = res.get("status")
    warnings = res.get("warnings") or []
    summary = test.get("summary") or {}
    if status == "Fail" and summary.get("status") == "Warn":
        # DCGM 4's table prints an entity's warning as "Fail" and only the test's own row
        # says "Warn"; DCGM rates a test Warn when none of its results failed
        status = "Warn"
    if status in ("Pass", "Skip") and not warnings:
        return
    targets = _entities(res) or [None]  # a DCGM 3 "Fail" for all GPUs is about the node
    for entity in targets:
        if warnings:
            for warning in warnings:
                rule = rule_for(warning)
                if status == "Warn" or (status in ("Pass", "Skip") and
                                        rule.status == Status.CRITICAL):
                    # DCGM did not fail the result: a warning, however it is rated
                    rule = Rule(Status.WARN, rule.remediation)
                _add(found, entity, _item(test, str(status), warning), rule)
        elif status == "Warn":
            _add(found, entity, _item(test, "Warn", None), Rule(Status.WARN, None))
        elif status == "Fail":
            _add(found, entity, _item(test, "Fail", None), SEVERITY_RULES[None])
        else:  # a status DCGM does not print ("Unknown", an empty cell): could not tell
            _add(found, entity, _item(test, str(status), None), Rule(
                Status.UNKNOWN, Remediation(Action.RETRY, "DCGM printed no result for this "
                                            "test: run dcgmi diag again")))


def _judge_summary(found: dict[str, _Findings], test: Mapping[str, Any],
                   summary: Mapping[str, Any]) -> None:
    status = summary.get("status")
    warnings = summary.get("warnings") or []
    for warning in warnings:
        rule = rule_for(warning)
        if status in ("Pass", "Skip", "Warn") and rule.status == Status.CRITICAL:
            rule = Rule(Status.WARN, rule.remediation)
        _add(found, None, _item(test, str(status), warning), rule)
    if status == "Fail" and not warnings and not any(
            r.get("status") == "Fail" for r in test.get("results") or []):
        _add(found, None, _item(test, "Fail", None), SEVERITY_RULES[None])


def _judge_unattributed(found: dict[str, _Findings], test: Mapping[str, Any]) -> None:
    failed = [r for r in test["results"] if r.get("status") == "Fail"]
    for message in test["warnings"]:
        warning = {"message": message, "error_id": None, "severity": None}
        targets = [e for r in failed for e in _entities(r)] or [None]
        for entity in targets:
            existing = found.get(_key(entity))
            if existing is not None:
                # the entity's Fail was recorded without a reason: this is the reason
                for item in existing.items:
                    if item["test"] == test.get("name") and "message" not in item:
                        item["message"] = message
                        break
                else:
                    _add(found, entity, _item(test, "Fail", warning), SEVERITY_RULES[None])
            else:
                rule = SEVERITY_RULES[None] if failed else Rule(Status.WARN, None)
                _add(found, entity, _item(test, test.get("status") or "Warn", warning), rule)


def _subject(node: str, entity: dict[str, Any] | None,
             serials: Mapping[tuple[Any, Any], Any]) -> Subject:
    if entity is None:
        return Subject(node)
    group, number = entity.get("group"), entity.get("id")
    serial = serials.get((group, number))
    ids = (("serial", str(serial)),) if serial and str(serial) not in _BLANK_SERIALS else ()
    return Subject(node, _PART.get(str(group), str(group)), str(number), ids)


def _result(node: str, findings: _Findings, serials: Mapping[tuple[Any, Any], Any],
            base: Mapping[str, Any]) -> CheckResult:
    status = worst(rule.status for rule in findings.rules)
    problems = []
    for item in findings.items:
        text = f"{item['test']}: {item['status']}"
        if item.get("message"):
            text += f": {item['message']}"
        if item.get("error"):
            text += f" ({item['error']}, severity {item['severity_name']})"
        elif item.get("severity") is not None:
            text += f" (severity {item['severity_name']})"
        problems.append(text)
    remediation = next((rule.remediation for rule in sorted(
        findings.rules, key=_gravity, reverse=True) if rule.status == status
        and rule.remediation is not None), None)
    if status == Status.OK:
        remediation = None
    return CheckResult(DCGM_DIAG, _subject(node, findings.entity, serials), status,
                       tuple(problems), {**base, "findings": findings.items}, remediation)


# Which remediation leads when one GPU has several findings of the same status: replacing
# the part outranks resetting it, which outranks a setting, which outranks a rerun.
_ACTION_GRAVITY = {Action.RMA: 5, Action.RESEAT: 4, Action.REBOOT: 3, Action.RECONFIGURE: 2,
                   Action.RETRY: 1}


def _gravity(rule: Rule) -> int:
    return _ACTION_GRAVITY.get(rule.remediation.action, 0) if rule.remediation else 0

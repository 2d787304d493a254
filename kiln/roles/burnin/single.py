"""The single-node burn-in judges: one node's runs, as kiln's check results.

    judge_nccl_single(node, run, burnin, gpus=8) -> CheckResult        "burnin-nccl-single"
    judge_ib_write_bw(node, run, burnin) -> CheckResult                "burnin-ib-write-bw"
    judge_ib_write_bw_all(node, runs, burnin, hcas=None) -> [CheckResult]
    judge_burnin_dcgm(node, output, burnin, duration_s, timed_out) -> [CheckResult]
                                                                       "burnin-dcgm"
    judge_single_node(node, burnin, …) -> [CheckResult]                all of the above

The runs come classified (kiln.roles.burnin.runs); the floors come from the SKU's manifest
(`burnin.single_node_all_reduce`, `burnin.ib_write_bw_min_gbps`, `burnin.dcgmi_diag_level`).
What each class becomes:

    OK             OK at or above the floor; CRITICAL below it (class BELOW_FLOOR)
    WRONG_RESULTS  CRITICAL: "wrong results: GPU computes wrong sums — RMA"
    CRASH          CRITICAL, quoting the tool's line (the NCCL failure, perftest's error)
    OUTLIER        CRITICAL: set by the fleet judging, said as it said it
    LAUNCHER, TIMEOUT, COULD_NOT_TEST
                   UNKNOWN ("could not test"), remediation retry: the run says nothing about
                   the node, and an UNKNOWN never hides another check's CRITICAL

Evidence: the values read (busbw/algbw or Gb/s, the size, the run's duration, the NCCL
version, the class), the floor, and for a failure the end of the output.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from kiln.core.checks import Action, CheckResult, Remediation, Status, Subject
from kiln.core.manifest import Burnin
from kiln.roles.burnin.runs import IbRun, NcclRun, RunClass, human_size
from kiln.roles.health.dcgm import judge_dcgm_output

BURNIN_NCCL_SINGLE = "burnin-nccl-single"
BURNIN_IB_WRITE_BW = "burnin-ib-write-bw"
BURNIN_DCGM = "burnin-dcgm"

WRONG_RESULTS = "wrong results: GPU computes wrong sums — RMA"

_RETRY = {
    RunClass.LAUNCHER: "the launcher failed twice: check that mpirun/srun can start the job "
                       "on this node (slots, ssh, the Slurm partition), then run burn-in again",
    RunClass.TIMEOUT: "the run hung or ran past its deadline and was killed: run burn-in "
                      "again; a node that hangs again is suspect (read dmesg for Xids)",
    RunClass.COULD_NOT_TEST: "the run said nothing about the node: read its output, fix what "
                             "it names, run burn-in again",
}


def _could_not_test(check: str, subject: Subject, message: str, run_class: RunClass,
                    evidence: Mapping[str, Any]) -> CheckResult:
    text = message if message.startswith("could not test") else f"could not test: {message}"
    return CheckResult(check, subject, Status.UNKNOWN, (text,), dict(evidence),
                       Remediation(Action.RETRY, _RETRY.get(run_class,
                                                            _RETRY[RunClass.COULD_NOT_TEST])))


# --- all_reduce_perf on the node's GPUs ---------------------------------------------------

_GPUS_FOUND = re.compile(r"(\d+) requested but only (\d+) were found")


def judge_nccl_single(node: str, run: NcclRun, burnin: Burnin, gpus: int | None = 8
                      ) -> CheckResult:
    """all_reduce_perf on the node's `gpus` GPUs against burnin.single_node_all_reduce."""
    floor = burnin.single_node_all_reduce
    subject = Subject(node)
    evidence = {**run.evidence, "class": str(run.run_class), "busbw_gbps": run.busbw_gbps,
                "algbw_gbps": run.algbw_gbps, "wrong": run.wrong, "size": run.size,
                "duration_s": run.duration_s, "nccl_version": run.nccl_version,
                "floor_busbw_gbps": floor.min_busbw_gbps, "floor_size": floor.size_bytes}
    check = BURNIN_NCCL_SINGLE
    if run.run_class in (RunClass.LAUNCHER, RunClass.TIMEOUT, RunClass.COULD_NOT_TEST):
        return _could_not_test(check, subject, run.message, run.run_class, evidence)
    if run.run_class == RunClass.WRONG_RESULTS:
        return CheckResult(check, subject, Status.CRITICAL, (WRONG_RESULTS, run.message),
                           evidence, Remediation(
                               Action.RMA, "a GPU on this node returns wrong sums (nccl-tests' "
                               "data check): name it with dcgmi diag -r 3 (or all_reduce_perf "
                               "on each GPU pair) and send that GPU back"))
    if run.run_class == RunClass.CRASH:
        return _nccl_crash(check, subject, run, evidence, gpus)
    if run.run_class == RunClass.OUTLIER:
        return CheckResult(check, subject, Status.CRITICAL, (run.message,), evidence,
                           _slow_nvlink())
    ranks = run.evidence.get("ranks")
    if gpus and ranks and ranks != gpus:
        return _could_not_test(
            check, subject, f"the run used {ranks} GPUs, not the node's {gpus}: its bandwidth "
            "is not the node's", RunClass.COULD_NOT_TEST, evidence)
    if run.busbw_gbps is None:
        return _could_not_test(check, subject, f"no busbw read: {run.message}",
                               RunClass.COULD_NOT_TEST, evidence)
    at = human_size(run.size)
    if run.size != floor.size_bytes:
        at += f" ({human_size(floor.size_bytes)}, the floor's size, did not run)"
    if run.busbw_gbps < floor.min_busbw_gbps:
        evidence["class"] = str(RunClass.BELOW_FLOOR)
        return CheckResult(check, subject, Status.CRITICAL, (
            f"all_reduce busbw {run.busbw_gbps:.1f} GB/s at {at} on {ranks or '?'} GPUs, "
            f"below the floor of {floor.min_busbw_gbps:g} GB/s",), evidence, _slow_nvlink())
    return CheckResult(check, subject, Status.OK, (), evidence)


def _slow_nvlink() -> Remediation:
    return Remediation(Action.RESEAT, "NVLink bandwidth is short: read nvidia-smi nvlink -s/-e "
                       "and the clocks (a link down or slow, a GPU throttling); reseat the GPU "
                       "tray and NVSwitch board connectors; RMA the GPU whose links stay slow")


def _nccl_crash(check: str, subject: Subject, run: NcclRun, evidence: dict[str, Any],
                gpus: int | None) -> CheckResult:
    line = run.line or run.message
    found = _GPUS_FOUND.search(line)
    if found:
        requested, present = map(int, found.groups())
        if gpus and present >= gpus:
            return _could_not_test(
                check, subject, f"nccl-tests was asked for {requested} GPUs on a node of "
                f"{gpus}: {line}", RunClass.COULD_NOT_TEST, evidence)
        return CheckResult(check, subject, Status.CRITICAL, (
            f"all_reduce_perf sees {present} GPUs, not {gpus or requested}: {line}",),
            evidence, Remediation(
                Action.RESEAT, "a GPU is missing from the node: find it with nvidia-smi and "
                "dmesg (Xid 79: fallen off the bus), reseat it; RMA it if it stays missing"))
    return CheckResult(check, subject, Status.CRITICAL, (f"all_reduce_perf failed: {line}",),
                       evidence, Remediation(
                           Action.REBOOT, "read the NCCL line and the kernel log (Xids name the "
                           "GPU); reset the node and run burn-in again; RMA the GPU if it "
                           "fails again"))


# --- ib_write_bw per HCA ------------------------------------------------------------------

_IB_CRASH_REMEDIATION = {
    "port-down": Remediation(
        Action.CHECK_CABLE, "the HCA's port is not Active: reseat its cable and transceiver at "
        "both ends, check the switch port is up and enabled; RMA the HCA if its link stays "
        "down with a known-good cable"),
    "device-missing": Remediation(
        Action.RESEAT, "the HCA is not there (no such RDMA device): reseat the card, check "
        "lspci and the mlx5_core driver; RMA the HCA if it stays missing"),
    "transport-error": Remediation(
        Action.CHECK_CABLE, "RDMA writes completed with errors (retries exhausted): reseat "
        "the cable and transceiver, check the switch port's error counters; RMA the HCA if "
        "the errors follow it"),
    "memory-registration": Remediation(
        Action.RECONFIGURE, "registering the buffer failed: for GPUDirect check that "
        "nvidia-peermem is loaded (or the kernel supports DMA-BUF), then run burn-in again"),
}


def judge_ib_write_bw(node: str, run: IbRun, burnin: Burnin,
                      ids: Sequence[tuple[str, str]] = ()) -> CheckResult:
    """One HCA's ib_write_bw run against burnin.ib_write_bw_min_gbps; the subject names the
    HCA (part "HCA", name "mlx5_3", `ids` such as its port GUID)."""
    floor = burnin.ib_write_bw_min_gbps
    subject = Subject(node, "HCA", run.hca, tuple(ids))
    evidence = {**run.evidence, "class": str(run.run_class), "hca": run.hca,
                "bw_average_gbps": run.bw_average_gbps, "bw_peak_gbps": run.bw_peak_gbps,
                "size": run.size, "duration_s": run.duration_s, "floor_gbps": floor}
    check = BURNIN_IB_WRITE_BW
    if run.run_class in (RunClass.LAUNCHER, RunClass.TIMEOUT, RunClass.COULD_NOT_TEST):
        return _could_not_test(check, subject, run.message, run.run_class, evidence)
    if run.run_class == RunClass.CRASH:
        remediation = _IB_CRASH_REMEDIATION.get(str(run.evidence.get("cause")), Remediation(
            Action.CHECK_CABLE, "read perftest's error; reseat the cable and transceiver, "
            "check the switch port; RMA the HCA if it fails again"))
        return CheckResult(check, subject, Status.CRITICAL,
                           (f"ib_write_bw on {run.hca} failed: {run.line or run.message}",),
                           evidence, remediation)
    slow = _slow_link(run.hca)
    if run.run_class == RunClass.OUTLIER:
        return CheckResult(check, subject, Status.CRITICAL, (run.message,), evidence, slow)
    if run.bw_average_gbps is None:
        return _could_not_test(check, subject, f"no bandwidth read: {run.message}",
                               RunClass.COULD_NOT_TEST, evidence)
    if run.bw_average_gbps < floor:
        evidence["class"] = str(RunClass.BELOW_FLOOR)
        return CheckResult(check, subject, Status.CRITICAL, (
            f"ib_write_bw on {run.hca}: {run.bw_average_gbps:.1f} Gb/s average at "
            f"{human_size(run.size)}, below the floor of {floor:g} Gb/s",), evidence, slow)
    return CheckResult(check, subject, Status.OK, (), evidence)


def _slow_link(hca: str) -> Remediation:
    return Remediation(Action.CHECK_CABLE, f"{hca} is slow: check its link rate and width "
                       "(ibstat), reseat the cable and transceiver at both ends, check the "
                       "switch port's speed and error counters; RMA the HCA if it stays slow")


def judge_ib_write_bw_all(node: str, runs: Iterable[IbRun], burnin: Burnin,
                          hcas: Iterable[str] | None = None,
                          ids: Mapping[str, Sequence[tuple[str, str]]] | None = None
                          ) -> list[CheckResult]:
    """One result per HCA, in `hcas` order where given: an HCA listed but not run is
    UNKNOWN (not tested), never silently passed."""
    by_hca = {run.hca: run for run in runs}
    order = list(hcas) if hcas is not None else sorted(by_hca)
    order += [hca for hca in sorted(by_hca) if hca not in order]
    results = []
    for hca in order:
        run = by_hca.get(hca)
        if run is None:
            results.append(_could_not_test(
                BURNIN_IB_WRITE_BW, Subject(node, "HCA", hca, tuple((ids or {}).get(hca, ()))),
                f"ib_write_bw did not run on {hca}", RunClass.COULD_NOT_TEST,
                {"hca": hca, "floor_gbps": burnin.ib_write_bw_min_gbps}))
        else:
            results.append(judge_ib_write_bw(node, run, burnin, (ids or {}).get(hca, ())))
    return results


# --- dcgmi diag at the burn-in level ------------------------------------------------------

def judge_burnin_dcgm(node: str, output: str, burnin: Burnin, duration_s: float,
                      timed_out: bool = False) -> list[CheckResult]:
    """`dcgmi diag -r <burnin level>` judged as the health stage judges it (judge_dcgm_output),
    named "burnin-dcgm", its run time in the evidence."""
    level = burnin.dcgmi_diag_level
    if timed_out:
        return [CheckResult(BURNIN_DCGM, Subject(node), Status.UNKNOWN, (
            f"could not test: dcgmi diag -r {level} did not finish within {duration_s:.0f} s "
            "and was killed",), {"level": level, "run_time_s": round(duration_s, 3),
                                  "timed_out": True, "output": output[-2000:]},
            Remediation(Action.RETRY, "run burn-in again; a dcgmi that hangs again on this "
                        "node is suspect (a GPU stuck: read dmesg for Xids, reset the node)"))]
    return [dataclasses.replace(result, check=BURNIN_DCGM, evidence={
        **result.evidence, "run_time_s": round(duration_s, 3), "timed_out": False})
        for result in judge_dcgm_output(node, output, level)]


# --- the node -----------------------------------------------------------------------------

def judge_single_node(node: str, burnin: Burnin, *, nccl: NcclRun | None = None,
                      ib: Iterable[IbRun] = (), hcas: Iterable[str] | None = None,
                      dcgm_output: str | None = None, dcgm_duration_s: float = 0.0,
                      dcgm_timed_out: bool = False, gpus: int | None = 8
                      ) -> list[CheckResult]:
    """Every single-node burn-in result of one node: dcgmi diag, all_reduce_perf, then
    ib_write_bw per HCA. A part not run is left out, except an HCA named in `hcas`."""
    results: list[CheckResult] = []
    if dcgm_output is not None or dcgm_timed_out:
        results += judge_burnin_dcgm(node, dcgm_output or "", burnin, dcgm_duration_s,
                                     dcgm_timed_out)
    if nccl is not None:
        results.append(judge_nccl_single(node, nccl, burnin, gpus))
    ib = list(ib)
    if ib or hcas is not None:
        results += judge_ib_write_bw_all(node, ib, burnin, hcas)
    return results

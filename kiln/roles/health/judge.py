"""Every health check of one node, from one read: which sections each check needs, and the
guard that keeps one check's trouble its own.

A check whose section timed out, was cut short or whose tool is missing is UNKNOWN with the
reason; a check that raises (output it cannot read) is UNKNOWN with the error. Neither hides
another check's CRITICAL: every check runs, and the results are combined worst-first
(kiln.core.checks.Combined).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kiln.core.checks import Action, CheckResult, Remediation, Status, Subject
from kiln.core.manifest import Manifest
from kiln.roles.health import gpu, network, system
from kiln.roles.health.bootlog import BOOT_LOG, judge_boot_log
from kiln.roles.health.dcgm import judge_dcgm_output
from kiln.roles.health.kernel import CURSOR as KERNEL_CURSOR
from kiln.roles.health.kernel import KERNEL_XID, LogCursor, judge_kernel_log
from kiln.roles.health.parsers import kernel_log_records
from kiln.roles.health.probe import SectionOutput
from kiln.roles.health.sel import BMC_SEL, judge_sel
from kiln.roles.health.sel import CURSOR as SEL_CURSOR

DCGM = "dcgm-diag"


@dataclass(frozen=True)
class SelRead:
    """The BMC's event log as read for this run, or why it could not be."""

    entries: list[dict[str, Any]] | None
    error: str | None = None


@dataclass
class Evaluation:
    results: list[CheckResult] = field(default_factory=list)
    # (node, cursor name) -> value, for the cursors that moved (new log entries judged)
    cursors: dict[tuple[str, str], Any] = field(default_factory=dict)


def unknown(check: str, node: str, why: str) -> CheckResult:
    return CheckResult(check, Subject(node), Status.UNKNOWN, (f"{check}: {why}",), {},
                       Remediation(Action.RETRY, "make it readable on the node, run the "
                                   "health check again"))


class _Judge:
    def __init__(self, node: str, sections: dict[str, SectionOutput]):
        self.node, self.sections = node, sections
        self.results: list[CheckResult] = []

    def section(self, name: str, accept_failure: bool = False) -> SectionOutput | str:
        """The section, or why it cannot be judged."""
        out = self.sections.get(name)
        if out is None:
            return f"the health read has no {name} section"
        why = out.why_unreadable()
        if why and not (accept_failure and not out.timed_out and out.rc is not None):
            return why
        return out

    def run(self, check: str, needs: list[str], judge: Callable[..., list[CheckResult]],
            accept_failure: bool = False) -> list[CheckResult]:
        """`judge(*sections)` for `check`, or UNKNOWN for it alone."""
        got = [self.section(name, accept_failure) for name in needs]
        missing = [g for g in got if isinstance(g, str)]
        if missing:
            found = [unknown(check, self.node, "; ".join(missing))]
        else:
            try:
                found = judge(*got)
            except Exception as exc:  # noqa: BLE001 - one check's failure is its own
                found = [unknown(check, self.node, f"could not judge {check}: "
                                 f"{type(exc).__name__}: {exc}")]
        self.results.extend(found)
        return found


def evaluate(node: str, sections: dict[str, SectionOutput], manifest: Manifest, *,
             kernel_cursor: Any, sel: SelRead | None, sel_cursor: Any,
             allowlist: Any, critical_rules: Any) -> Evaluation:
    """Judge one node's health read (and its BMC event log)."""
    judge = _Judge(node, sections)
    out = Evaluation()
    has_gpus = manifest.topology.gpu.count > 0
    smi: list[gpu.SmiState] = []

    def smi_state(section: SectionOutput) -> list[CheckResult]:
        smi.append(gpu.smi_state(section.text, section.rc))
        return gpu.check_count(node, smi[0], manifest)

    if has_gpus:
        judge.run(gpu.GPU_COUNT, ["nvidia_smi"], smi_state, accept_failure=True)
        if smi and smi[0].report is not None:
            state = smi[0]
            for check, function in ((gpu.GPU_VERSIONS, gpu.check_versions),
                                    (gpu.GPU_CONFIG, gpu.check_config),
                                    (gpu.GPU_MEMORY, gpu.check_memory),
                                    (gpu.GPU_PCIE, gpu.check_pcie),
                                    (gpu.GPU_THERMAL, gpu.check_thermal)):
                judge.run(check, [], lambda f=function: f(node, state, manifest))
            judge.run(gpu.GPU_NVLINK, ["nvlink"],
                      lambda s: gpu.check_nvlink(node, state, s.text, manifest))
            judge.run(gpu.GPU_FABRIC, ["fabricmanager"],
                      lambda s: gpu.check_fabric(node, state, s.text.strip() or None, manifest),
                      accept_failure=True)
        else:
            why = "nvidia-smi gave no report (see gpu-count)"
            for check in (gpu.GPU_VERSIONS, gpu.GPU_CONFIG, gpu.GPU_MEMORY, gpu.GPU_PCIE,
                          gpu.GPU_THERMAL, gpu.GPU_NVLINK, gpu.GPU_FABRIC):
                judge.results.append(unknown(check, node, why))
        judge.run(DCGM, ["dcgm"], lambda s: judge_dcgm_output(
            node, s.text, manifest.health.dcgmi_diag_level), accept_failure=True)

    gpus = ([(g.get("pci_bus_id") or "", gpu.gpu_subject(node, g, i))
             for i, g in enumerate(smi[0].report["gpus"])] if smi and smi[0].report else [])

    def kernel(boot: SectionOutput, log: SectionOutput) -> list[CheckResult]:
        boot_id = boot.text.strip()
        judged = judge_kernel_log(node, log.text, boot_id,
                                  LogCursor.from_json(kernel_cursor), gpus)
        if judged.moved and judged.cursor is not None:
            out.cursors[(node, KERNEL_CURSOR)] = judged.cursor.as_json()
        return judged.results

    judge.run(KERNEL_XID, ["boot_id", "dmesg"], kernel)
    judge.run(BOOT_LOG, ["dmesg"], lambda s: judge_boot_log(
        node, [message for _, message in kernel_log_records(s.text)], allowlist,
        critical_rules))

    if manifest.topology.hca.count:
        report: dict[str, Any] = {}

        def hcas(section: SectionOutput) -> list[CheckResult]:
            found, parsed = network.check_hcas(node, section.text, manifest)
            report.update(parsed)
            return found

        judge.run("infiniband-hca", ["hca"], hcas)
        if report:
            judge.run(network.PEERMEM, [], lambda: network.check_peermem(node, report,
                                                                         manifest))
        else:
            judge.results.append(unknown(network.PEERMEM, node, "the HCA read gave nothing"))

    want = manifest.health.host
    judge.run(system.HOST_CPU, ["cpu"],
              lambda s: [system.check_cpu(node, system.parse_cpuinfo(s.text), want)])
    judge.run(system.HOST_MEMORY, ["memory"],
              lambda s: [system.check_memory(node, system.parse_meminfo(s.text), want)])
    judge.run(system.HOST_DISKS, ["nvme", "df"], lambda n, d: system.check_disks(
        node, system.parse_nvme(n.text), system.parse_df(d.text), want))
    judge.run(system.HOST_SWAP, ["swaps"],
              lambda s: [system.check_swap(node, system.parse_swaps(s.text), want)])
    judge.run(system.HOST_TIME, ["time"],
              lambda s: [system.check_time(node, system.parse_time_sync(s.text), want)],
              accept_failure=True)
    if want.container_runtime != "none":
        judge.run(system.CONTAINER, ["container"], lambda s: [system.check_container(
            node, s.text, s.rc, manifest.topology.gpu.count)], accept_failure=True)

    if sel is not None:
        if sel.entries is None:
            judge.results.append(unknown(BMC_SEL, node, f"the BMC's event log could not be "
                                                        f"read: {sel.error}"))
        else:
            def judge_bmc() -> list[CheckResult]:
                result, cursor, moved = judge_sel(node, sel.entries, sel_cursor)
                if moved and cursor is not None:
                    out.cursors[(node, SEL_CURSOR)] = cursor
                return [result]
            judge.run(BMC_SEL, [], judge_bmc)

    out.results = judge.results
    return out

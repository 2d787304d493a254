"""Network checks from the fabric stage's own read (kiln.roles.infiniband): every HCA the
SKU has present, Active, LinkUp, at rate, on InfiniBand, at PCIe Gen and width (the fabric
stage's node-side check, `check_fabric`, recorded under its name); nvidia-peermem loaded
(GPUDirect RDMA: without it NCCL silently copies through host memory)."""

from __future__ import annotations

from typing import Any

from kiln.core.checks import Action, CheckResult, Remediation, Status, Subject
from kiln.core.manifest import Manifest
from kiln.roles.infiniband.checks import check_fabric
from kiln.roles.infiniband.parsers import parse_hca_report

PEERMEM = "nvidia-peermem"


def check_hcas(node: str, text: str, manifest: Manifest) -> tuple[list[CheckResult],
                                                                    dict[str, Any]]:
    """The fabric stage's HCA results for this read, and the parsed report (its modules)."""
    report = parse_hca_report(text)
    if manifest.topology.hca.count == 0:
        return [], report
    result = check_fabric(report["hcas"], manifest.topology.hca, node)
    return list(result.combined.results), report


def check_peermem(node: str, report: dict[str, Any], manifest: Manifest) -> list[CheckResult]:
    if manifest.topology.gpu.count == 0 or manifest.topology.hca.count == 0:
        return []
    loaded = "nvidia_peermem" in report.get("modules", [])
    if loaded:
        return [CheckResult(PEERMEM, Subject(node), Status.OK, (), {"loaded": True})]
    return [CheckResult(PEERMEM, Subject(node), Status.CRITICAL,
                        ("nvidia_peermem is not loaded: GPUDirect RDMA is off, NCCL copies "
                         "through host memory",), {"loaded": False},
                        Remediation(Action.RECONFIGURE, "modprobe nvidia_peermem (bring-up's "
                                    "infiniband stage loads it and at boot); if it fails, "
                                    "reinstall the driver against the running OFED"))]

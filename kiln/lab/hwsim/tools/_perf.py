"""What the burn-in tools share: a node's health as the fabric sees it."""

from __future__ import annotations

from typing import Any

from ..faults import PCIE_GEN
from ..profile import NVLINKS_PER_GPU
from ..view import View


def nvlink_factor(view: View, gpus: list[int] | None = None) -> float:
    """How much of a healthy node's NVLink bandwidth the slowest of `gpus` still has."""
    factor = 1.0
    for gpu in view.gpus:
        if gpus is not None and gpu["index"] not in gpus:
            continue
        active = sum(1 for link in gpu["nvlinks"] if link["active"])
        degraded = view.profile["sim"]["nvlink_factor"].get(gpu["index"], 1.0)
        # A dead link leaves the ring waiting on that GPU's remaining links.
        factor = min(factor, active / NVLINKS_PER_GPU * degraded)
    return factor


def hca_gbps(hca: dict[str, Any]) -> float:
    """What one port moves in a large RDMA write: link rate, or the PCIe link if narrower."""
    port = hca["ports"][0]
    if port["state"] != "Active":
        return 0.0
    gen = hca["pcie"].get("gen_current", hca["pcie"]["gen"])
    pcie = PCIE_GEN[gen][1] * hca["pcie"]["width_current"] / 1000 * 0.87
    return min(port["rate"] * 0.98, pcie)


def ib_factor(view: View) -> float:
    """The node's share of healthy inter-node bandwidth: NCCL stripes channels over every
    rail, so one slow or missing rail holds back the whole ring."""
    rails = [hca_gbps(h) for h in view.hcas]
    if not rails or max(rails) == 0:
        return 0.0
    up = [r for r in rails if r > 0]
    return len(up) / len(rails) * min(up) / (400 * 0.98)


def health(view: View, gpus: list[int] | None = None) -> dict[str, Any]:
    wrong = view.profile["sim"]["wrong_results"]
    return {
        "nvlink": nvlink_factor(view, gpus),
        "ib": ib_factor(view),
        "wrong": any(g in wrong for g in (gpus if gpus is not None else wrong)),
        "flaky_fail": view.flaky_fails("all_reduce_perf"),
    }

"""`kiln health NODE`: the node's health results as the ledger holds them, as a table.

The last result of every check and part (GPU 3, HCA mlx5_2, the node), worst first, with
what was wrong and what to do. Read-only: no ledger is created, nothing is written.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from kiln.core.checks import Status
from kiln.core.ledger import RecordedCheck, latest_results

# Every check the health stage records (and the fabric stage's HCA check, which it reuses).
HEALTH_CHECKS = (
    "gpu-count", "gpu-versions", "gpu-config", "gpu-memory", "gpu-pcie", "gpu-clocks",
    "gpu-nvlink", "gpu-fabric", "dcgm-diag", "kernel-xid", "boot-log", "bmc-sel",
    "infiniband-hca", "nvidia-peermem", "host-cpu", "host-memory", "host-disks", "host-swap",
    "host-time", "container-runtime",
)


def health_rows(ledger: Path | str, node: str) -> list[RecordedCheck]:
    rows = latest_results(ledger, node, HEALTH_CHECKS)
    return sorted(rows, key=lambda r: (-r.status.rank, r.name, r.subject))


def as_json(rows: list[RecordedCheck]) -> list[dict[str, Any]]:
    return [{"check": r.name, "subject": r.subject_text or r.subject, "status": str(r.status),
             "detail": r.detail, "remediation": r.remediation,
             "evidence": json.loads(r.evidence) if r.evidence else {},
             "at": datetime.fromtimestamp(r.at).isoformat(timespec="seconds")} for r in rows]


def render(rows: list[RecordedCheck], node: str, only_problems: bool = False) -> str:
    """A table a person reads in a terminal (rich): every result that is not OK on its own
    row, worst first; the OK results one row per check ("8 parts")."""
    from rich.console import Console
    from rich.table import Table

    colour = {Status.CRITICAL: "red", Status.UNKNOWN: "magenta", Status.WARN: "yellow",
              Status.OK: "green"}
    table = Table(title=f"health of {node}", show_lines=False)
    for column in ("status", "check", "part", "what", "do", "when"):
        table.add_column(column, overflow="fold")
    for r in rows:
        if r.status == Status.OK:
            continue
        part = r.subject_text.split(": ", 1)[1] if ": " in r.subject_text else ""
        what = r.detail.split(": ", 2)[-1].split(" -> ")[0]
        table.add_row(f"[{colour[r.status]}]{r.status}[/]", r.name, part, what,
                      r.remediation, _when(r.at))
    if not only_problems:
        ok: dict[str, list[RecordedCheck]] = {}
        for r in rows:
            if r.status == Status.OK:
                ok.setdefault(r.name, []).append(r)
        for name, group in sorted(ok.items()):
            parts = [r.subject for r in group if r.subject != "node"]
            label = (f"{len(parts)} parts" if len(parts) > 1 else parts[0] if parts else "")
            table.add_row(f"[{colour[Status.OK]}]OK[/]", name, label, "", "",
                          _when(max(r.at for r in group)))
    console = Console(width=160, record=True, force_terminal=False)
    with console.capture() as capture:
        console.print(table)
        counts = {s: sum(1 for r in rows if r.status == s) for s in Status}
        console.print(", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no results")
    return capture.get()


def _when(at: float) -> str:
    return datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M")

"""What the ledger says about the fleet, for people: `kiln nodes` and `kiln nodes NODE`.

The rows come from the ledger's read-only queries (node_overview, node_history): neither
command makes or changes a ledger.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from kiln.core.ledger import NodeOverview, Run, Transition, iso_time

COLOUR = {"pooled": "green", "quarantined": "red", "burning-in": "yellow"}


def _when(at: float | None) -> str:
    return datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M") if at else ""


def _run_text(run: Run | None) -> str:
    if run is None:
        return ""
    return f"#{run.id} {Path(run.deploy).name} {run.result or 'running'} {_when(run.started_at)}"


def fleet_json(rows: list[NodeOverview]) -> list[dict[str, Any]]:
    return [{"node": r.node, "state": str(r.state),
             "since": iso_time(r.since), "reason": r.reason,
             "last_busbw_gbps": r.last_busbw_gbps,
             "last_run": r.last_run.as_dict() if r.last_run else None} for r in rows]


def render_fleet(rows: list[NodeOverview]) -> str:
    from rich.table import Table

    table = Table(title="nodes, as the ledger holds them")
    for column in ("node", "state", "since", "reason", "last busbw", "last run"):
        table.add_column(column, overflow="fold")
    for r in rows:
        colour = COLOUR.get(str(r.state))
        state = f"[{colour}]{r.state}[/]" if colour else str(r.state)
        busbw = f"{r.last_busbw_gbps:.1f} GB/s" if r.last_busbw_gbps is not None else ""
        table.add_row(r.node, state, _when(r.since), r.reason, busbw, _run_text(r.last_run))
    counts: dict[str, int] = {}
    for r in rows:
        counts[str(r.state)] = counts.get(str(r.state), 0) + 1
    return _captured(table, ", ".join(f"{n} {state}" for state, n in sorted(counts.items())))


def history_json(rows: list[tuple[Transition, Run | None]]) -> list[dict[str, Any]]:
    return [{**t.as_dict(), "run": run.as_dict() if run else None} for t, run in rows]


def render_history(rows: list[tuple[Transition, Run | None]], node: str) -> str:
    from rich.table import Table

    table = Table(title=f"history of {node}")
    for column in ("when", "from", "to", "reason", "run"):
        table.add_column(column, overflow="fold")
    for t, run in rows:
        table.add_row(_when(t.at), str(t.from_state or ""), str(t.to_state), t.reason,
                      _run_text(run))
    return _captured(table, f"{len(rows)} transitions")


def _captured(table: Any, footer: str) -> str:
    from rich.console import Console

    console = Console(width=160, record=True, force_terminal=False)
    with console.capture() as capture:
        console.print(table)
        console.print(footer or "no nodes")
    return capture.get()

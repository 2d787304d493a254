"""A report per run, in JSON and Markdown, beside the ledger: `<state>/reports/run-<id>.*`.

Written when a run ends (kiln.core.runlock), from the ledger alone: the run (deploy,
controller, start, end, result) and each node it held, with the state the node ended in, its
reason, and the moves the run made. Nothing in it comes from outside the ledger, so a
report holds no more than the ledger does: no credentials.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.core.ledger import Run, Transition, node_history, node_overview, run_record


@dataclass(frozen=True)
class NodeInRun:
    node: str
    state: str
    reason: str
    moves: tuple[Transition, ...]  # the transitions this run made, oldest first


def run_report(ledger: Path | str, run_id: int) -> dict[str, Any] | None:
    """The report of run `run_id` as data; None when the ledger has no such run."""
    found = run_record(ledger, run_id)
    if found is None:
        return None
    run, nodes = found
    overview = {row.node: row for row in node_overview(ledger)}
    held = []
    for node in nodes:
        row = overview.get(node)
        moves = tuple(t for t, _ in node_history(ledger, node) if t.run_id == run_id)
        held.append(NodeInRun(node, str(row.state) if row else "not enrolled",
                              row.reason if row else "", moves))
    return _as_data(run, held)


def _as_data(run: Run, nodes: list[NodeInRun]) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for node in nodes:
        counts[node.state] = counts.get(node.state, 0) + 1
    return {
        "run": run.as_dict(),
        "counts": counts,
        "nodes": [{"node": n.node, "state": n.state, "reason": n.reason,
                   "moves": [t.as_dict() for t in n.moves]}
                  for n in nodes],
    }


def markdown(report: dict[str, Any]) -> str:
    run = report["run"]
    lines = [f"# kiln run {run['id']}: {run['deploy']}", "",
             f"- result: **{run['result'] or 'running'}**",
             f"- started {run['started']} on {run['controller'] or '?'} (pid {run['pid']}), "
             f"finished {run['finished'] or '-'}",
             "- nodes: " + (", ".join(f"{n} {state}" for state, n in
                                      sorted(report["counts"].items())) or "none"),
             "", "| node | state | reason |", "|---|---|---|"]
    for node in report["nodes"]:
        reason = node["reason"].replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {node['node']} | {node['state']} | {reason} |")
    return "\n".join(lines) + "\n"


def write_run_report(ledger: Path | str, run_id: int) -> Path | None:
    """Write `reports/run-<id>.json` and `.md` beside the ledger (each replaced whole);
    the JSON file's path, or None when the ledger has no such run."""
    report = run_report(ledger, run_id)
    if report is None:
        return None
    directory = Path(ledger).parent / "reports"
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"run-{run_id}.json"
    for path, text in ((target, json.dumps(report, indent=1) + "\n"),
                       (target.with_suffix(".md"), markdown(report))):
        partial = path.with_name(path.name + ".partial")
        partial.write_text(text)
        os.replace(partial, path)
    return target

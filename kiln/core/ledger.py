"""The ledger: each node's lifecycle state, every transition, every run and check result.

SQLite (`state/kiln.db` by default, `kiln_ledger` in group data). It is the record, not the
source of truth about a node — facts are gathered fresh on every run — but it is what says
why a node is out of the pool, and what reports are rendered from.

Lifecycle states are named after Ironic's, and as in Ironic every transition is explicit:
`transition()` refuses a move the table below does not allow, so a node can only reach the
pool from burn-in, and only through the gate.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from kiln.core.checks import CheckResult, Status
from kiln.core.errors import KilnError

T = TypeVar("T")


class NodeState(StrEnum):
    ENROLLED = "enrolled"
    COMMISSIONING = "commissioning"
    READY = "ready"
    DEPLOYING = "deploying"
    DEPLOYED = "deployed"
    CONFIGURED = "configured"
    BURNING_IN = "burning-in"
    POOLED = "pooled"
    QUARANTINED = "quarantined"
    REPROVISIONING = "reprovisioning"


S = NodeState
# Every allowed move. Quarantine is reachable from every working state: a failure anywhere
# takes the node out with a reason. Reprovisioning restarts the cycle from any settled state.
TRANSITIONS: dict[NodeState, frozenset[NodeState]] = {
    # A machine MAAS already commissioned or deployed before kiln first saw it is adopted
    # where it stands (the reason says "found ... in MAAS").
    S.ENROLLED: frozenset({S.COMMISSIONING, S.READY, S.DEPLOYING, S.DEPLOYED, S.QUARANTINED}),
    S.COMMISSIONING: frozenset({S.READY, S.QUARANTINED}),
    S.READY: frozenset({S.DEPLOYING, S.COMMISSIONING, S.QUARANTINED}),
    S.DEPLOYING: frozenset({S.DEPLOYED, S.QUARANTINED}),
    S.DEPLOYED: frozenset({S.CONFIGURED, S.QUARANTINED, S.REPROVISIONING}),
    S.CONFIGURED: frozenset({S.BURNING_IN, S.QUARANTINED, S.REPROVISIONING}),
    S.BURNING_IN: frozenset({S.POOLED, S.QUARANTINED}),
    S.POOLED: frozenset({S.CONFIGURED, S.QUARANTINED, S.REPROVISIONING}),
    # Out of quarantine only through work that proves the node again: a new commissioning,
    # a release for a new deploy (MAAS's way back from Failed deployment), a reprovision,
    # or the configure stage of a node that was only quarantined by a later check.
    S.QUARANTINED: frozenset({S.REPROVISIONING, S.COMMISSIONING, S.READY, S.CONFIGURED}),
    S.REPROVISIONING: frozenset({S.COMMISSIONING, S.QUARANTINED}),
}


class InvalidTransition(KilnError):
    pass


def iso_time(at: float | None) -> str | None:
    """A ledger time (Unix seconds) as the JSON that kiln prints and writes carries it."""
    return datetime.fromtimestamp(at).isoformat(timespec="seconds") if at else None


@dataclass(frozen=True)
class Transition:
    node: str
    from_state: NodeState | None
    to_state: NodeState
    reason: str
    run_id: int | None
    at: float

    def as_dict(self) -> dict[str, Any]:
        return {"at": iso_time(self.at),
                "from": str(self.from_state) if self.from_state else None,
                "to": str(self.to_state), "reason": self.reason}


SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    name TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS transitions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    node TEXT NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    run_id INTEGER REFERENCES runs(id),
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    deploy TEXT NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL,
    result TEXT
);
CREATE TABLE IF NOT EXISTS checks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    node TEXT NOT NULL,
    run_id INTEGER REFERENCES runs(id),
    name TEXT NOT NULL,
    passed INTEGER NOT NULL,
    value REAL,
    detail TEXT NOT NULL DEFAULT '',
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS cursors (
    node TEXT NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (node, name)
);
CREATE TABLE IF NOT EXISTS node_locks (
    node TEXT PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    taken_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS run_nodes (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    node TEXT NOT NULL,
    PRIMARY KEY (run_id, node)
);
CREATE TABLE IF NOT EXISTS audits (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    controller TEXT NOT NULL DEFAULT '',
    nodes INTEGER NOT NULL,
    drifted_nodes INTEGER NOT NULL,
    summary TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS drifts (
    node TEXT NOT NULL,
    item TEXT NOT NULL,
    place TEXT NOT NULL,
    expected TEXT NOT NULL,
    found TEXT NOT NULL,
    since REAL NOT NULL,
    audit_id INTEGER NOT NULL REFERENCES audits(id),
    PRIMARY KEY (node, item, place)
);
CREATE INDEX IF NOT EXISTS run_nodes_node ON run_nodes(node, run_id);
CREATE INDEX IF NOT EXISTS transitions_node ON transitions(node, id);
CREATE INDEX IF NOT EXISTS checks_node ON checks(node, id);
"""

# Schema version 2: a check row carries a typed result (kiln.core.checks): its status, the
# subject it is about (a key stable across runs, and the words a person reads), the evidence
# (JSON) and the remediation. Added to a version-1 ledger's `checks` table in place (ALTER
# TABLE ADD COLUMN keeps every row); old rows read as OK or CRITICAL from `passed`.
# Schema version 3: a run carries the controller (host name) and process that ran it, so a
# run whose process is gone can be told from one still going (kiln.core.runlock).
SCHEMA_VERSION = 3
RUN_COLUMNS = (
    ("controller", "TEXT NOT NULL DEFAULT ''"),
    ("pid", "INTEGER"),
)
CHECK_COLUMNS = (
    ("status", "TEXT"),
    ("subject", "TEXT NOT NULL DEFAULT ''"),
    ("subject_text", "TEXT NOT NULL DEFAULT ''"),
    ("evidence", "TEXT NOT NULL DEFAULT ''"),
    ("remediation", "TEXT NOT NULL DEFAULT ''"),
)


def _migrate(db: sqlite3.Connection) -> None:
    (version,) = db.execute("PRAGMA user_version").fetchone()
    if version >= SCHEMA_VERSION:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        have = {row[1] for row in db.execute("PRAGMA table_info(checks)")}
        for name, kind in CHECK_COLUMNS:
            if name not in have:
                db.execute(f"ALTER TABLE checks ADD COLUMN {name} {kind}")
        have = {row[1] for row in db.execute("PRAGMA table_info(runs)")}
        for name, kind in RUN_COLUMNS:
            if name not in have:
                db.execute(f"ALTER TABLE runs ADD COLUMN {name} {kind}")
        db.execute("CREATE INDEX IF NOT EXISTS checks_subject ON checks(node, name, subject, id)")
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


@dataclass(frozen=True)
class Run:
    id: int
    deploy: str
    controller: str
    pid: int | None
    started_at: float
    finished_at: float | None
    result: str | None

    def describe(self) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started_at))
        where = f"pid {self.pid} on {self.controller}" if self.controller else "an older kiln"
        return f"run {self.id} ({self.deploy}, {where}, started {started})"

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "deploy": self.deploy, "controller": self.controller,
                "pid": self.pid, "started": iso_time(self.started_at),
                "finished": iso_time(self.finished_at), "result": self.result}


_RUN_FIELDS = "id, deploy, controller, pid, started_at, finished_at, result"
_RUN_FIELDS_OF_R = ", ".join("r." + name for name in _RUN_FIELDS.split(", "))


@dataclass(frozen=True)
class RecordedCheck:
    node: str
    name: str
    subject: str  # Subject.key ('' for a row without one)
    status: Status
    detail: str
    subject_text: str
    evidence: str  # JSON
    remediation: str
    at: float


def _status(status: str | None, passed: int) -> Status:
    return Status(status) if status else (Status.OK if passed else Status.CRITICAL)


def _read_only(path: Path) -> sqlite3.Connection:
    # Without a write-ahead log left beside it the file is all there is: read it as
    # immutable (no lock, no -shm file). With one, a read-only connection reads both.
    wal = path.with_name(path.name + "-wal").exists()
    mode = "mode=ro" if wal else "mode=ro&immutable=1"
    return sqlite3.connect(f"{path.resolve().as_uri()}?{mode}", uri=True, timeout=30)


@dataclass(frozen=True)
class NodeOverview:
    """One node as `kiln nodes` shows it."""

    node: str
    state: NodeState
    since: float
    reason: str
    last_busbw_gbps: float | None  # its own 8-GPU all_reduce_perf, last burn-in
    last_run: Run | None


def _reading(path: Path | str, read: Callable[[sqlite3.Connection], T], nothing: T) -> T:
    """`read(db)` on the ledger at `path`, opened read-only: nothing is made when there is no
    file, no schema is applied. `nothing` when there is no ledger (or no ledger in it yet)."""
    path = Path(path)
    if not path.is_file():
        return nothing
    db = _read_only(path)
    try:
        return read(db)
    except sqlite3.OperationalError:
        return nothing  # a file with no ledger in it yet
    finally:
        db.close()


def _table_columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


def node_overview(path: Path | str) -> list[NodeOverview]:
    """Every node the ledger knows, by name, read without writing anything; [] when there
    is no ledger."""
    def read(db: sqlite3.Connection) -> list[NodeOverview]:
        nodes = db.execute("SELECT name, state, updated_at, reason FROM nodes "
                           "ORDER BY name").fetchall()
        busbw = {}
        for node, evidence in db.execute(
                "SELECT c.node, c.evidence FROM checks c JOIN (SELECT node, MAX(id) AS id "
                "FROM checks WHERE name = 'burnin-nccl-single' GROUP BY node) last "
                "ON c.id = last.id"):
            value = json.loads(evidence or "{}").get("busbw_gbps")
            busbw[node] = float(value) if isinstance(value, (int, float)) else None
        runs: dict[str, Run] = {}
        if "run_nodes" in {row[0] for row in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")} and \
                "controller" in _table_columns(db, "runs"):
            for row in db.execute(
                    f"SELECT n.node, {_RUN_FIELDS_OF_R} FROM run_nodes n JOIN runs r "
                    "ON r.id = n.run_id JOIN (SELECT node, MAX(run_id) AS run_id FROM "
                    "run_nodes GROUP BY node) last ON last.node = n.node "
                    "AND last.run_id = n.run_id"):
                runs[row[0]] = Run(*row[1:])
        return [NodeOverview(name, NodeState(state), since, reason, busbw.get(name),
                             runs.get(name)) for name, state, since, reason in nodes]

    return _reading(path, read, [])


def node_history(path: Path | str, node: str) -> list[tuple[Transition, Run | None]]:
    """The node's transitions, oldest first, each with the run that made it (where known);
    read without writing anything."""
    def read(db: sqlite3.Connection) -> list[tuple[Transition, Run | None]]:
        rows = db.execute("SELECT node, from_state, to_state, reason, run_id, at FROM "
                          "transitions WHERE node = ? ORDER BY id", (node,)).fetchall()
        runs = {row[0]: Run(*row) for row in db.execute(
            f"SELECT {_RUN_FIELDS} FROM runs")} if "controller" in _table_columns(db, "runs") \
            else {}
        return [(Transition(n, NodeState(f) if f else None, NodeState(t), r, run, at),
                 runs.get(run) if run is not None else None)
                for n, f, t, r, run, at in rows]

    return _reading(path, read, [])


def run_record(path: Path | str, run_id: int) -> tuple[Run, list[str]] | None:
    """Run `run_id` and the nodes it held, by name; read without writing anything. None when
    the ledger has no such run (or records no runs yet)."""
    def read(db: sqlite3.Connection) -> tuple[Run, list[str]] | None:
        row = db.execute(f"SELECT {_RUN_FIELDS} FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            return None
        nodes = [name for (name,) in db.execute(
            "SELECT node FROM run_nodes WHERE run_id = ? ORDER BY node", (run_id,))]
        return Run(*row), nodes

    return _reading(path, read, None)


@dataclass(frozen=True)
class DriftSeen:
    """One value of one node that differs, as the last audits saw it (table `drifts`)."""

    node: str
    item: str
    place: str  # where on the node ("mlx5_3"); '' for the node itself
    expected: str  # '' for a value pinned nowhere (an inconsistency)
    found: str


def drift_since(path: Path | str) -> dict[DriftSeen, float]:
    """When each drift the ledger holds was first seen (since then every audit that read the
    node saw it); read without writing anything. {} with no ledger or no audit yet."""
    def read(db: sqlite3.Connection) -> dict[DriftSeen, float]:
        return {DriftSeen(*row[:5]): row[5] for row in db.execute(
            "SELECT node, item, place, expected, found, since FROM drifts")}

    return _reading(path, read, {})


def recorded_state(path: Path | str, node: str) -> NodeState | None:
    """The node's state as the ledger at `path` records it, read without writing anything:
    no file is made when there is none, no schema is applied. What a run reads while it
    plans (a preview too), before any yielded command changes the record."""
    def read(db: sqlite3.Connection) -> NodeState | None:
        row = db.execute("SELECT state FROM nodes WHERE name = ?", (node,)).fetchone()
        return NodeState(row[0]) if row else None

    return _reading(path, read, None)


def last_results(path: Path | str, node: str, check: str) -> dict[str, Status]:
    """The last recorded status of `check` for each subject of the node (Subject.key ->
    Status); {} when none is recorded (or there is no ledger). Read without writing
    anything: a check operation compares it with what it finds while it plans, and
    records only what differs."""
    path = Path(path)
    if not path.is_file():
        return {}
    db = _read_only(path)
    try:
        columns = {row[1] for row in db.execute("PRAGMA table_info(checks)")}
        if "subject" not in columns:  # a version-1 ledger: one subject per check
            rows = db.execute("SELECT '', NULL, passed FROM checks WHERE node = ? AND name = ? "
                              "ORDER BY id DESC LIMIT 1", (node, check)).fetchall()
        else:
            rows = db.execute(
                "SELECT c.subject, c.status, c.passed FROM checks c JOIN ("
                " SELECT subject, MAX(id) AS id FROM checks WHERE node = ? AND name = ?"
                " GROUP BY subject) last ON c.id = last.id", (node, check)).fetchall()
    except sqlite3.OperationalError:
        return {}
    finally:
        db.close()
    return {subject: _status(status, passed) for subject, status, passed in rows}


def latest_results(path: Path | str, node: str,
                   checks: tuple[str, ...] | None = None) -> list[RecordedCheck]:
    """The last recorded result of every (check, subject) of the node, by check then
    subject; [] when there is no ledger. Read without writing anything (`kiln health`)."""
    path = Path(path)
    if not path.is_file():
        return []
    db = _read_only(path)
    try:
        rows = db.execute(
            "SELECT c.node, c.name, c.subject, c.status, c.passed, c.detail, c.subject_text, "
            "c.evidence, c.remediation, c.at FROM checks c JOIN ("
            " SELECT name, subject, MAX(id) AS id FROM checks WHERE node = ?"
            " GROUP BY name, subject) last ON c.id = last.id ORDER BY c.name, c.subject",
            (node,)).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        db.close()
    return [RecordedCheck(n, name, subject, _status(status, passed), detail, text,
                          evidence or "", remediation or "", at)
            for n, name, subject, status, passed, detail, text, evidence, remediation, at
            in rows if checks is None or name in checks]


def read_cursor(path: Path | str, node: str, name: str) -> Any:
    """Where a check that reads a growing log (the kernel log, the BMC's event log) stopped
    judging on this node last time (JSON, as `Ledger.set_cursor` stored it); None when it
    never ran. Read without writing anything, while the check plans."""
    path = Path(path)
    if not path.is_file():
        return None
    db = _read_only(path)
    try:
        row = db.execute("SELECT value FROM cursors WHERE node = ? AND name = ?",
                         (node, name)).fetchone()
    except sqlite3.OperationalError:
        return None  # a ledger from before cursors: none kept yet
    finally:
        db.close()
    return json.loads(row[0]) if row else None


def last_passed(path: Path | str, node: str, check: str) -> float | None:
    """When the node last passed `check`, as the ledger at `path` records it; None when it
    never did (or there is no ledger). Read without writing anything, like
    `recorded_state`: a stage reads it while it plans, a preview too."""
    path = Path(path)
    if not path.is_file():
        return None
    db = _read_only(path)
    try:
        row = db.execute("SELECT MAX(at) FROM checks WHERE node = ? AND name = ? AND passed = 1",
                         (node, check)).fetchone()
    except sqlite3.OperationalError:
        return None
    finally:
        db.close()
    return float(row[0]) if row and row[0] is not None else None


def last_recorded(path: Path | str, node: str, check: str,
                  subject: str | None = None) -> RecordedCheck | None:
    """The last recorded result of `check` for the node (for one subject, Subject.key, when
    given), with its evidence; None when there is none (or no ledger). Read without
    writing anything: what `kiln dmesg learn` reads the boot-log check's unknown lines from."""
    path = Path(path)
    if not path.is_file():
        return None
    db = _read_only(path)
    try:
        query = ("SELECT node, name, subject, status, passed, detail, subject_text, evidence, "
                 "remediation, at FROM checks WHERE node = ? AND name = ?")
        args: tuple[str, ...] = (node, check)
        if subject is not None:
            query += " AND subject = ?"
            args += (subject,)
        row = db.execute(query + " ORDER BY id DESC LIMIT 1", args).fetchone()
    except sqlite3.OperationalError:
        return None  # no ledger in the file yet, or one from before typed results
    finally:
        db.close()
    if row is None:
        return None
    n, name, key, status, passed, detail, text, evidence, remediation, at = row
    return RecordedCheck(n, name, key, _status(status, passed), detail, text, evidence,
                         remediation, at)


# ledger file (resolved) -> the run this process records in it (kiln.core.runlock sets it
# once the run holds its nodes): transitions and check results written without a run id
# belong to it.
_CURRENT_RUNS: dict[Path, int] = {}


def set_current_run(path: Path | str, run_id: int | None) -> None:
    key = Path(path).resolve()
    if run_id is None:
        _CURRENT_RUNS.pop(key, None)
    else:
        _CURRENT_RUNS[key] = run_id


_SET_CURSOR = ("INSERT INTO cursors (node, name, value, updated_at) VALUES (?, ?, ?, ?) "
               "ON CONFLICT(node, name) DO UPDATE SET value = excluded.value, "
               "updated_at = excluded.updated_at")


class Ledger:
    """One SQLite file; safe to open from several processes (WAL, short transactions)."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        _migrate(self._db)
        self._current_run = _CURRENT_RUNS.get(self.path.resolve())

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def state(self, node: str) -> NodeState | None:
        row = self._db.execute("SELECT state FROM nodes WHERE name = ?", (node,)).fetchone()
        return NodeState(row[0]) if row else None

    def reason(self, node: str) -> str:
        row = self._db.execute("SELECT reason FROM nodes WHERE name = ?", (node,)).fetchone()
        return row[0] if row else ""

    def enroll(self, node: str, run_id: int | None = None) -> bool:
        """Record a node the first time kiln sees it; False when it was known already."""
        run_id = self._current_run if run_id is None else run_id
        with self._write() as db:
            if db.execute("SELECT 1 FROM nodes WHERE name = ?", (node,)).fetchone():
                return False
            now = time.time()
            db.execute(
                "INSERT INTO nodes (name, state, updated_at) VALUES (?, ?, ?)",
                (node, S.ENROLLED, now),
            )
            db.execute(
                "INSERT INTO transitions (node, from_state, to_state, reason, run_id, at) "
                "VALUES (?, NULL, ?, 'enrolled', ?, ?)",
                (node, S.ENROLLED, run_id, now),
            )
        return True

    def transition(
        self, node: str, to_state: NodeState, reason: str = "", run_id: int | None = None
    ) -> Transition | None:
        """Move a node; None when it is already there (recorded once, not per run)."""
        to_state = NodeState(to_state)
        run_id = self._current_run if run_id is None else run_id
        with self._write() as db:
            row = db.execute("SELECT state FROM nodes WHERE name = ?", (node,)).fetchone()
            if row is None:
                raise InvalidTransition(f"node {node}: not enrolled in the ledger {self.path}")
            from_state = NodeState(row[0])
            if from_state == to_state:
                if reason:
                    db.execute("UPDATE nodes SET reason = ? WHERE name = ?", (reason, node))
                return None
            if to_state not in TRANSITIONS[from_state]:
                allowed = ", ".join(sorted(TRANSITIONS[from_state]))
                raise InvalidTransition(
                    f"node {node}: {from_state} -> {to_state} is not allowed "
                    f"(from {from_state}: {allowed})"
                )
            now = time.time()
            db.execute(
                "UPDATE nodes SET state = ?, reason = ?, updated_at = ? WHERE name = ?",
                (to_state, reason, now, node),
            )
            db.execute(
                "INSERT INTO transitions (node, from_state, to_state, reason, run_id, at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (node, from_state, to_state, reason, run_id, now),
            )
        return Transition(node, from_state, to_state, reason, run_id, now)

    def history(self, node: str) -> list[Transition]:
        rows = self._db.execute(
            "SELECT node, from_state, to_state, reason, run_id, at FROM transitions "
            "WHERE node = ? ORDER BY id",
            (node,),
        ).fetchall()
        return [
            Transition(n, NodeState(f) if f else None, NodeState(t), r, run, at)
            for n, f, t, r, run, at in rows
        ]

    def nodes(self) -> dict[str, tuple[NodeState, str]]:
        rows = self._db.execute("SELECT name, state, reason FROM nodes ORDER BY name")
        return {name: (NodeState(state), reason) for name, state, reason in rows}

    def start_run(self, deploy: str, controller: str = "", pid: int | None = None) -> int:
        with self._write() as db:
            cursor = db.execute(
                "INSERT INTO runs (deploy, started_at, controller, pid) VALUES (?, ?, ?, ?)",
                (deploy, time.time(), controller, pid),
            )
        return int(cursor.lastrowid)

    def finish_run(self, run_id: int, result: str) -> None:
        """The run ended (`result`: succeeded, failed, interrupted); its node locks go."""
        with self._write() as db:
            db.execute(
                "UPDATE runs SET finished_at = ?, result = ? WHERE id = ?",
                (time.time(), result, run_id),
            )
            db.execute("DELETE FROM node_locks WHERE run_id = ?", (run_id,))

    def run(self, run_id: int) -> Run | None:
        row = self._db.execute(f"SELECT {_RUN_FIELDS} FROM runs WHERE id = ?",
                               (run_id,)).fetchone()
        return Run(*row) if row else None

    def runs(self) -> list[Run]:
        return [Run(*row) for row in
                self._db.execute(f"SELECT {_RUN_FIELDS} FROM runs ORDER BY id")]

    def record_audit(self, nodes: list[str], seen: list[DriftSeen], summary: str,
                     controller: str = "", at: float | None = None) -> int:
        """One audit of `nodes` that found `seen`, in one transaction. A drift an earlier
        audit saw keeps its `since`; one gone from a node audited now is forgotten; the
        drifts of nodes not audited now are left as they were."""
        at = time.time() if at is None else at
        drifted = {drift.node for drift in seen}
        with self._write() as db:
            audit_id = int(db.execute(
                "INSERT INTO audits (at, controller, nodes, drifted_nodes, summary) "
                "VALUES (?, ?, ?, ?, ?)",
                (at, controller, len(nodes), len(drifted), summary)).lastrowid)
            before = {DriftSeen(*row[:5]): row[5] for row in db.execute(
                "SELECT node, item, place, expected, found, since FROM drifts")}
            audited = set(nodes)
            db.executemany("DELETE FROM drifts WHERE node = ?", [(n,) for n in sorted(audited)])
            db.executemany(
                "INSERT OR REPLACE INTO drifts (node, item, place, expected, found, since, "
                "audit_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(d.node, d.item, d.place, d.expected, d.found, before.get(d, at), audit_id)
                 for d in seen if d.node in audited])
        return audit_id

    def close_dead_runs(self, controller: str, alive: Callable[[Run], bool]) -> list[Run]:
        """Record as interrupted every unfinished run of `controller` whose process is gone
        (`alive(run)` is false: killed, or the controller rebooted), and free its nodes.
        A run of another controller is left alone: its process cannot be seen from here."""
        with self._write() as db:
            rows = db.execute(f"SELECT {_RUN_FIELDS} FROM runs WHERE finished_at IS NULL "
                              "AND controller = ?", (controller,)).fetchall()
            runs = [Run(*row) for row in rows]
            dead = [run for run in runs if run.pid is None or not alive(run)]
            now = time.time()
            for run in dead:
                db.execute("UPDATE runs SET finished_at = ?, result = 'interrupted' "
                           "WHERE id = ?", (now, run.id))
                db.execute("DELETE FROM node_locks WHERE run_id = ?", (run.id,))
        return dead

    def lock_nodes(self, run_id: int, nodes: Iterable[str]) -> dict[str, Run]:
        """Take each node for `run_id`, in one transaction; the nodes another unfinished run
        holds are not taken and come back with that run."""
        held: dict[str, Run] = {}
        with self._write() as db:
            now = time.time()
            for node in nodes:
                row = db.execute(
                    f"SELECT {_RUN_FIELDS_OF_R} FROM node_locks l JOIN runs r "
                    "ON r.id = l.run_id WHERE l.node = ?",
                    (node,)).fetchone()
                if row is not None and row[0] != run_id and row[5] is None:
                    held[node] = Run(*row)
                    continue
                db.execute("INSERT INTO node_locks (node, run_id, taken_at) VALUES (?, ?, ?) "
                           "ON CONFLICT(node) DO UPDATE SET run_id = excluded.run_id, "
                           "taken_at = excluded.taken_at", (node, run_id, now))
                db.execute("INSERT OR IGNORE INTO run_nodes (run_id, node) VALUES (?, ?)",
                           (run_id, node))
        return held

    def locked_nodes(self) -> dict[str, int]:
        """node -> the run holding it."""
        return dict(self._db.execute("SELECT node, run_id FROM node_locks ORDER BY node"))

    def record_check(
        self,
        node: str,
        name: str,
        passed: bool,
        value: float | None = None,
        detail: str = "",
        run_id: int | None = None,
    ) -> None:
        run_id = self._current_run if run_id is None else run_id
        with self._write() as db:
            db.execute(
                "INSERT INTO checks (node, run_id, name, passed, value, detail, status, at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (node, run_id, name, int(passed), value, detail,
                 Status.OK if passed else Status.CRITICAL, time.time()),
            )

    def record_result(self, result: CheckResult, value: float | None = None,
                      run_id: int | None = None) -> None:
        """One typed check result (kiln.core.checks): `passed` is its status's (OK and
        WARN pass), `detail` its message."""
        self.record_results([result], value=value, run_id=run_id)

    def record_results(self, results: list[CheckResult], value: float | None = None,
                       run_id: int | None = None,
                       cursors: dict[tuple[str, str], Any] | None = None) -> None:
        """Several results, in one transaction (one check's results for every part), with
        the log cursors ((node, name) -> value) they were judged up to: both or neither."""
        now = time.time()
        run_id = self._current_run if run_id is None else run_id
        with self._write() as db:
            db.executemany(
                "INSERT INTO checks (node, run_id, name, passed, value, detail, status, "
                "subject, subject_text, evidence, remediation, at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(r.subject.node, run_id, r.check, int(r.passes), value, r.message, r.status,
                  r.subject.key, str(r.subject), r.evidence_json(),
                  str(r.remediation) if r.remediation else "", now) for r in results],
            )
            for (node, name), cursor in (cursors or {}).items():
                db.execute(_SET_CURSOR, (node, name, json.dumps(cursor, sort_keys=True), now))

    def set_cursor(self, node: str, name: str, value: Any) -> None:
        """Keep where a log check stopped (see `read_cursor`)."""
        with self._write() as db:
            db.execute(_SET_CURSOR, (node, name, json.dumps(value, sort_keys=True), time.time()))

    def results(self, node: str, check: str | None = None) -> list[RecordedCheck]:
        """Every recorded check of the node (or only `check`), oldest first."""
        query = ("SELECT node, name, subject, status, passed, detail, subject_text, evidence, "
                 "remediation, at FROM checks WHERE node = ?")
        args: tuple[str, ...] = (node,)
        if check is not None:
            query += " AND name = ?"
            args += (check,)
        rows = self._db.execute(query + " ORDER BY id", args).fetchall()
        return [RecordedCheck(n, name, subject, _status(status, passed), detail, text,
                              evidence, remediation, at)
                for n, name, subject, status, passed, detail, text, evidence, remediation, at
                in rows]

    def checks(self, node: str) -> list[tuple[str, bool, float | None, str]]:
        rows = self._db.execute(
            "SELECT name, passed, value, detail FROM checks WHERE node = ? ORDER BY id", (node,)
        )
        return [(name, bool(passed), value, detail) for name, passed, value, detail in rows]

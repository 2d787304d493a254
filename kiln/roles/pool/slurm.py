"""The Slurm pool: Slurm's own node states, changed only where kiln changed them.

kiln reads a node with `scontrol -o show node NAME` and changes it with `scontrol update`:

    drain:  scontrol update NodeName=gpu-003 State=DRAIN Reason="kiln: health failed: ..."
    add:    scontrol update NodeName=gpu-003 State=RESUME   (only a drain kiln made)

A node is out of the pool while its state carries Slurm's DRAIN flag; the drain is kiln's
when its reason starts with "kiln: ". Another's reason is never overwritten and its node
never resumed (kiln.roles.pool's rule).

The commands run where `scontrol` reaches slurmctld: on the inventory host group data names
(`kiln_pool: {backend: slurm, controller: svc-001}`), through that host's own pyinfra
connection (its SSH login and keys, as for every other command kiln runs), or on the
machine kiln runs on (`controller: "@local"`). One command runs on the controller at a time:
every GPU node of a run shares the controller's one pyinfra connection, and pyinfra's SSH
connector runs one command at a time on a host (two at once broke a session in the lab:
paramiko's "unhandled type 3", then a command that never returned). A read is ~20 ms.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kiln.core.context import node_context
from kiln.core.errors import KilnError
from kiln.roles.pool.model import HeldByAnother, Membership, PoolEntry, kiln_reason, membership_of

MAX_CONCURRENT = 1  # per controller: see the module docstring
TIMEOUT_S = 60  # scontrol's own retries to a slurmctld that is down take ~ 20 s


@dataclass(frozen=True)
class Reply:
    """What one command on the controller gave."""

    ok: bool
    stdout: str
    stderr: str


Runner = Callable[[list[str]], Reply]


class SlurmError(KilnError):
    """scontrol failed or said something kiln cannot read."""


# -- reading `scontrol -o show node` --------------------------------------------------------

# A reason as scontrol prints it: the text, then who set it and when.
_REASON_STAMP = re.compile(r"^(?P<text>.*?)\s*\[(?P<by>[^@\]]+)@(?P<at>[^\]]+)\]\s*$")
# The fields of one node, "Key=value" separated by spaces (values may hold spaces: OS=,
# Reason=); a field starts where a space is followed by a CamelCase key and "=".
_FIELD = re.compile(r"(?:^|\s)(?P<key>[A-Za-z_][A-Za-z0-9_]*)=")
# Reason (and Comment/Extra, free text) run to the end of the line in Slurm 22.05's one-line
# output, so nothing after their "=" is split.
_FREE_TEXT = ("Reason", "Comment", "Extra")


@dataclass(frozen=True)
class SlurmNode:
    name: str
    state: str  # as printed: IDLE, IDLE+DRAIN, DOWN+DRAIN+NOT_RESPONDING, MIXED+DRAIN, ...
    reason: str = ""  # without Slurm's [user@time]
    reason_by: str = ""
    reason_at: str = ""

    @property
    def flags(self) -> set[str]:
        return set(self.state.rstrip("*").split("+")[1:])

    @property
    def base_state(self) -> str:
        return self.state.split("+")[0].rstrip("*~#!%$@^-")

    @property
    def drained(self) -> bool:
        """Out of the pool: the DRAIN flag (DRAINING and DRAINED alike: no new job lands)."""
        return "DRAIN" in self.flags or self.base_state in ("DRAIN", "DRAINED", "DRAINING")


def node_fields(line: str) -> dict[str, str]:
    """One line of `scontrol -o show node` as its fields."""
    fields: dict[str, str] = {}
    starts = list(_FIELD.finditer(line))
    for i, found in enumerate(starts):
        key = found["key"]
        end = starts[i + 1].start() if i + 1 < len(starts) else len(line)
        if key in _FREE_TEXT:
            fields[key] = line[found.end():].strip()
            break
        fields[key] = line[found.end():end].strip()
    return fields


def parse_nodes(text: str) -> list[SlurmNode]:
    """`scontrol -o show node [NAME]`: one node per line that starts with NodeName=; other
    lines (warnings, a launcher's noise) are not nodes."""
    nodes = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("NodeName="):
            continue
        fields = node_fields(line)
        if "State" not in fields:
            raise SlurmError(f"scontrol: node {fields['NodeName']!r} has no State= field: "
                             f"{line[:200]!r}")
        reason, by, at = fields.get("Reason", ""), "", ""
        stamped = _REASON_STAMP.match(reason)
        if stamped:
            reason, by, at = stamped["text"], stamped["by"], stamped["at"]
        nodes.append(SlurmNode(fields["NodeName"], fields["State"], reason, by, at))
    return nodes


# -- the pool -------------------------------------------------------------------------------


class SlurmPool:
    def __init__(self, run: Runner, where: str = "slurm", names: dict[str, str] | None = None):
        self._run = run
        self.where = getattr(run, "where", where)
        self._names = names or {}

    def _slurm_name(self, node: str) -> str:
        return self._names.get(node, node)

    def _scontrol(self, *args: str) -> Reply:
        argv = ["scontrol", *args]
        reply = self._run(argv)
        if not reply.ok:
            said = (reply.stderr or reply.stdout).strip() or "no output"
            raise SlurmError(f"{self.where}: `{shlex.join(argv)}` failed: {said}")
        return reply

    def node(self, node: str) -> SlurmNode | None:
        """The node as slurmctld holds it; None when Slurm does not know it."""
        name = self._slurm_name(node)
        reply = self._run(["scontrol", "-o", "show", "node", name])
        said = (reply.stderr + reply.stdout).strip()
        # Slurm 22.05 says so on stdout, exit 1 (tests/fixtures/slurm/show-node-nosuch.stdout).
        if not reply.ok and re.search(rf"^Node {re.escape(name)} not found$", reply.stdout,
                                      re.MULTILINE):
            return None
        if not reply.ok:
            raise SlurmError(f"{self.where}: `scontrol -o show node {name}` failed: "
                             f"{said or 'no output'}")
        found = [n for n in parse_nodes(reply.stdout) if n.name == name]
        if not found:
            raise SlurmError(f"{self.where}: `scontrol -o show node {name}` printed no "
                             f"NodeName={name} line: {said[:300]!r}")
        return found[0]

    def entry(self, node: str) -> PoolEntry:
        found = self.node(node)
        if found is None:
            return PoolEntry(node, Membership.UNKNOWN)
        return PoolEntry(node, membership_of(found.drained, found.reason),
                         found.reason if found.drained else "", found.state)

    def _known(self, node: str) -> SlurmNode:
        found = self.node(node)
        if found is None:
            raise SlurmError(f"{self.where}: Slurm does not know node "
                             f"{self._slurm_name(node)} (not in slurm.conf's NodeName lines)")
        return found

    def add(self, node: str) -> bool:
        found = self._known(node)
        if not found.drained:
            return False
        if membership_of(True, found.reason) == Membership.HELD:
            raise HeldByAnother(f"{self.where}: {node} is drained by someone else "
                                f"({found.reason!r}, by {found.reason_by or '?'}): kiln "
                                "leaves it out")
        self._scontrol("update", f"NodeName={found.name}", "State=RESUME")
        return True

    def drain(self, node: str, reason: str) -> bool:
        reason = kiln_reason(reason, node)
        found = self._known(node)
        if found.drained and membership_of(True, found.reason) == Membership.HELD:
            return False  # another's reason stays: the node is out either way
        if found.drained and found.reason == reason:
            return False
        self._scontrol("update", f"NodeName={found.name}", "State=DRAIN", f"Reason={reason}")
        return True


# -- where scontrol runs --------------------------------------------------------------------


def _local(argv: list[str]) -> Reply:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S)
    except FileNotFoundError:
        return Reply(False, "", f"{argv[0]}: not found on this machine")
    except subprocess.TimeoutExpired:
        return Reply(False, "", f"no answer in {TIMEOUT_S} s")
    return Reply(done.returncode == 0, done.stdout, done.stderr)


_GATES: dict[str, Any] = {}


def _gate(controller: str) -> Any:
    from gevent.lock import BoundedSemaphore

    if controller not in _GATES:
        _GATES[controller] = BoundedSemaphore(MAX_CONCURRENT)
    return _GATES[controller]



def controller_runner(host: Any, controller: str) -> Runner:
    """Run scontrol on `controller`: an inventory host (through its pyinfra connection,
    opened if this run has not) or "@local"."""
    if controller == "@local":
        def local(argv: list[str]) -> Reply:
            return _local(argv)

        local.where = "Slurm pool (scontrol on this machine)"  # type: ignore[attr-defined]
        return local
    from pyinfra.api.command import StringCommand

    where = f"Slurm pool on {controller}"
    try:
        target = host.state.inventory.get_host(controller)
    except Exception:  # noqa: BLE001 - pyinfra's NoHostError and a host with no state alike
        raise KilnError(f"group data kiln_pool.controller: {controller!r} is not a host of "
                        "this inventory") from None

    # `scontrol update` is for root and SlurmUser: another login goes through sudo.
    sudo = node_context(target).sudo

    def remote(argv: list[str]) -> Reply:
        with _gate(controller):
            if not target.connected:
                try:
                    target.connect(raise_exceptions=True, show_errors=False)
                except Exception as exc:  # noqa: BLE001 - pyinfra's ConnectError and its causes
                    return Reply(False, "", f"cannot reach {controller}: {exc}")
            try:
                ok, output = target.run_shell_command(StringCommand(shlex.join(argv)),
                                                      print_output=False, print_input=False,
                                                      _timeout=TIMEOUT_S, _sudo=sudo)
            except Exception as exc:  # noqa: BLE001 - a lost connection, a timeout: said
                return Reply(False, "", f"on {controller}: {type(exc).__name__}: {exc}")
        return Reply(ok, output.stdout, output.stderr)

    remote.where = where  # type: ignore[attr-defined]
    return remote

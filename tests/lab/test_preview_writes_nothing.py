"""A preview writes nothing: `pyinfra --dry` and a run without `-y` (answered no) of the
whole bring-up on the deployed lab leave the ledger, the controller's state directories and
every node byte-identical.

The ledger starts with one node enrolled and the others unknown, so that the adoption of a
deployed machine (enrolled → deployed) has something to write if it ever runs while
planning. The nodes are compared through their overlay's upper directory: everything a
node has written since it was imaged, except what an SSH login itself leaves (logs, /run).
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from kiln.core.ledger import Ledger
from kiln.lab.state import mirror_state_dir

pytestmark = pytest.mark.lab

# What sshd and the login session write on every connection, preview or not.
LOGIN_VOLATILE = ("var/log/", "run/", "tmp/", "var/tmp/", "var/cache/private/")
# What the lab's Slurm daemons save on their own, every few minutes, whoever runs what:
# slurmctld's state save (node_state, job_state, ...) and slurmd's spool.
SCHEDULER_STATE = ("var/lib/slurm/",)


def tree_digest(directory: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """path → sha256 (or the link target, or 'dir') of everything under `directory`."""
    found: dict[str, str] = {}
    if not directory.exists():
        return found
    for path in sorted(directory.rglob("*")):
        name = str(path.relative_to(directory))
        if any(name.startswith(prefix) or name + "/" == prefix for prefix in skip):
            continue
        if path.is_symlink():
            found[name] = f"-> {path.readlink()}"
        elif path.is_file():
            found[name] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif path.is_dir():
            found[name] = f"dir {oct(path.stat().st_mode & 0o7777)}"
        else:
            found[name] = "special"
    return found


def everything(lab, state: Path) -> dict[str, dict[str, str]]:
    lab_dir = Path(lab.lab_dir)
    seen = {"controller state": tree_digest(state),
            "lab mirror state": tree_digest(mirror_state_dir(lab_dir))}
    for node in lab.nodes:
        seen[node.name] = tree_digest(lab_dir / "nodes" / node.name / "upper",
                                       LOGIN_VOLATILE + SCHEDULER_STATE)
    return seen


def changed(before: dict[str, dict[str, str]], after: dict[str, dict[str, str]]) -> list[str]:
    lines = []
    for where in before:
        old, new = before[where], after[where]
        for name in sorted(set(old) | set(new)):
            if old.get(name) != new.get(name):
                lines.append(f"{where}: {name}: {old.get(name)} -> {new.get(name)}")
    return lines


@pytest.fixture(scope="module")
def controller_state(lab, tmp_path_factory: pytest.TempPathFactory) -> Path:
    state = tmp_path_factory.mktemp("state")
    ledger = Ledger(state / "kiln.db")
    ledger.enroll(lab.nodes[0].name)
    ledger.close()
    (state / "pool.yaml").write_text("nodes: {}\n")
    return state


def bringup(labtools, state: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(labtools.bin / "pyinfra"), *flags, "inventory/lab.py", "deploy/bringup.py",
         "--data", f"kiln_ledger={state / 'kiln.db'}",
         "--data", f"kiln_pool_file={state / 'pool.yaml'}"],
        cwd=labtools.root, input="no\n", stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, timeout=900)


def test_dry_run_of_bringup_writes_nothing(lab, labtools, controller_state: Path):
    before = everything(lab, controller_state)
    result = bringup(labtools, controller_state, "--dry")
    # The preview itself worked: it planned the stages on every node.
    assert "Loading: deploy/bringup.py" in result.stdout, result.stdout[-3000:]
    assert "Traceback" not in result.stdout, result.stdout[-3000:]
    assert "Base: the node's OS" in result.stdout or "apt installs from the mirror only" in \
        result.stdout, result.stdout[-3000:]
    assert changed(before, everything(lab, controller_state)) == []


def test_run_without_yes_answered_no_writes_nothing(lab, labtools, controller_state: Path):
    before = everything(lab, controller_state)
    result = bringup(labtools, controller_state)
    # pyinfra showed the changes, then asked whether to execute them: answered no.
    assert "Press enter to execute" in result.stdout, result.stdout[-3000:]
    assert "Unexpected user input: no" in result.stdout, result.stdout[-3000:]
    assert "Traceback" not in result.stdout, result.stdout[-3000:]
    assert changed(before, everything(lab, controller_state)) == []

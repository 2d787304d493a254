"""The whole lab: `up`, `down`, and the per-node power and reset calls other parts use.

    from lab.cluster import reset_node, power_off, power_on
    reset_node("gpu-003")    # what a MAAS deploy does: blank writable layer, fresh boot

Every call takes the lab lock (`<lab>/lock`), so two kiln commands never change the lab at
once. `down` needs no state file: it finds kiln's namespaces, veths, mounts and processes
by name, so it also cleans up after a crashed `up`.
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from lab import integrations, netns
from lab.host import LabError, require_root, require_tools, run
from lab.nodes import Node
from lab.rootfs import ensure_base
from lab.state import (
    LabState,
    NodeState,
    StateError,
    lab_dir,
    load_state,
    plan_nodes,
    remove_state,
    save_state,
)

UP_TOOLS = ["ip", "unshare", "mount", "umount", "pivot_root", "ssh-keygen"]
SSH_TIMEOUT = 60.0

Log = Callable[[str], None]


@contextmanager
def lab_lock(lab: Path) -> Iterator[None]:
    lab.mkdir(parents=True, exist_ok=True)
    with open(lab / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def ensure_ssh_key(lab: Path) -> Path:
    """The lab's own key pair, made once per lab directory."""
    key = lab / "ssh" / "id_ed25519"
    if not key.exists():
        key.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "kiln-lab", "-f", str(key)])
    return key


def _running_state(lab: Path) -> LabState | None:
    try:
        state = load_state(lab)
    except StateError:
        return None
    return state if any(Node(lab, n).running() for n in state.nodes) else None


def up(
    gpu_nodes: int,
    service_nodes: int,
    faults_file: Path | None = None,
    log: Log = print,
) -> LabState:
    require_root()
    require_tools(UP_TOOLS)
    lab = lab_dir()
    nodes = plan_nodes(gpu_nodes, service_nodes)
    if faults_file is not None and not faults_file.is_file():
        raise LabError(f"--faults {faults_file}: no such file")
    with lab_lock(lab):
        if _running_state(lab) is not None:
            raise LabError(f"the lab in {lab} is already up (kiln lab status); kiln lab down first")
        _teardown(lab)  # leftovers of a crashed run
        base = ensure_base(lab, log)
        key = ensure_ssh_key(lab)
        state = LabState(
            lab_dir=str(lab),
            ssh_key=str(key),
            nodes=nodes,
            faults_file=str(faults_file.resolve()) if faults_file else None,
        )
        started = time.monotonic()
        netns.ensure_bridge()
        public_key = key.with_suffix(".pub").read_text()
        machines = [Node(lab, n) for n in nodes]
        for machine in machines:
            machine.wipe()
            machine.prepare_hardware(faults_file)
            netns.create_node_network(machine.name, machine.state.address)
        log(f"kiln lab: {integrations.start_vendor_repo(lab, log)} "
            f"({state.endpoints['vendor_repo']})")
        for machine in machines:
            machine.mount()
            machine.install_identity(nodes, public_key)
            try:
                machine.boot()
            except integrations.NodeBootFailed as exc:
                # A real node that does not boot stays racked and powered: keep it, say why.
                log(f"kiln lab: {exc}")
                machine.state.state = "boot-failed"
                continue
            machine.state.state = "running"
        # Saved before waiting: a node that fails to come up is still there to look at.
        save_state(state, lab)
        _wait_all_ssh([m for m in machines if m.state.state == "running"])
        elapsed = time.monotonic() - started
        log(f"kiln lab: {len(nodes)} nodes up in {elapsed:.1f} s (base {base})")
        return state


def _wait_all_ssh(machines: list[Node]) -> None:
    with ThreadPoolExecutor(max_workers=min(32, len(machines))) as pool:
        futures = [pool.submit(m.wait_ssh, SSH_TIMEOUT) for m in machines]
        errors = []
        for future in futures:
            try:
                future.result()
            except LabError as exc:
                errors.append(str(exc))
    if errors:
        raise LabError("\n".join(errors))


def down(log: Log = print) -> None:
    """Stop everything the lab started; safe to run any number of times."""
    require_root()
    require_tools(["ip", "umount"])
    lab = lab_dir()
    with lab_lock(lab):
        _teardown(lab)
        remove_state(lab)
    log("kiln lab: down")


def _teardown(lab: Path) -> None:
    for pid_file in sorted((lab / "nodes").glob("*/pid")):
        # Stopping needs only the node's name (its netns follows from it).
        stub = NodeState(name=pid_file.parent.name, role="gpu", index=0, address="")
        Node(lab, stub).power_off()
    netns.delete_all()
    _unmount_under(lab)
    integrations.stop_vendor_repo(lab)


def lab_mounts(lab: Path) -> list[str]:
    """Mount points on the host under the lab directory, deepest first."""
    prefix = str(lab.resolve()).rstrip("/") + "/"
    points = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            point = line.split()[4].encode().decode("unicode_escape")
            if point.startswith(prefix):
                points.append(point)
    return sorted(points, key=len, reverse=True)


def _unmount_under(lab: Path) -> None:
    for point in lab_mounts(lab):
        if run(["umount", point], check=False).returncode != 0:
            run(["umount", "-l", point], check=False)


# -- per node: what MAAS and the BMC simulators call --------------------------------------


def _node_call(name: str, action: Callable[[LabState, Node, Path], None]) -> None:
    require_root()
    lab = lab_dir()
    with lab_lock(lab):
        state = load_state(lab)
        machine = Node(lab, state.node(name))
        action(state, machine, lab)
        save_state(state, lab)


def power_off(name: str) -> None:
    def action(state: LabState, machine: Node, lab: Path) -> None:
        machine.power_off()
        machine.state.state = "off"

    _node_call(name, action)


def power_on(name: str, wait: bool = True) -> None:
    def action(state: LabState, machine: Node, lab: Path) -> None:
        machine.boot()
        machine.state.state = "running"
        if wait:
            machine.wait_ssh(SSH_TIMEOUT)

    _node_call(name, action)


def reset_node(name: str, wait: bool = True) -> None:
    """Off, a blank writable layer (what imaging does), the install identity, on."""

    def action(state: LabState, machine: Node, lab: Path) -> None:
        machine.power_off()
        machine.wipe()
        machine.mount()
        public_key = Path(state.ssh_key).with_suffix(".pub").read_text()
        machine.install_identity(state.nodes, public_key)
        machine.boot()
        machine.state.state = "running"
        if wait:
            machine.wait_ssh(SSH_TIMEOUT)

    _node_call(name, action)

"""Real Slurm in the lab: Debian's slurmctld on the first service node, slurmd on every GPU
node, munge on both, one partition (`gpu`).

The daemons are in the image (kiln/lab/rootfs.py PACKAGES) and disabled there; what a site's
imaging writes at install (`install_node`, called from `Node.install_identity`) makes a node
run its role's share: /etc/slurm/slurm.conf (from the lab's node list), /etc/slurm/cgroup.conf,
/etc/munge/munge.key (the lab's one key, `<lab>/slurm/munge.key`, new at every `kiln lab up`)
and the units enabled for the role. A reimaged node gets them again, so it rejoins by itself
(`ReturnToService=2`).

The lab's nodes share the host's kernel and have no systemd or cgroup tree of their own, so
Slurm runs without cgroups: process tracking through /proc, no task binding, no accounting
gatherer, and the node sizes declared here believed (`SlurmdParameters=config_overrides`).
Slurm 22.05's slurmd always loads a cgroup plugin at start and its autodetection finds no
hierarchy in a lab node, so cgroup.conf names cgroup/v1, whose start needs none while no
plugin above uses cgroups. GPUs are not declared as a generic resource: 22.05's gres/gpu
drops a GPU without `File=` ("Removing file-less GPU"), and a lab node has no /dev/nvidia*.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from pathlib import Path

from kiln.lab.host import LabError
from kiln.lab.state import LabState, NodeState

PARTITION = "gpu"
CLUSTER_NAME = "kilnlab"
# The declared size of a lab GPU node: an 8-GPU H100 server's (2 sockets of 56 cores, two
# threads each; 2 TiB). Believed as declared (config_overrides): the lab's nodes share the
# host's CPUs and memory.
NODE_SHAPE = ("Boards=1 SocketsPerBoard=2 CoresPerSocket=56 ThreadsPerCore=2 "
              "RealMemory=2000000")
# Short, so a node that loses power shows as not responding within seconds, not minutes.
SLURMD_TIMEOUT = 30
MUNGE_KEY = "slurm/munge.key"
MUNGE_KEY_BYTES = 128  # mungekey's default (1024 bits)
WANTS = "etc/systemd/system/multi-user.target.wants"
UNIT_DIR = "/lib/systemd/system"
ROLE_UNITS = {"service": ("munge.service", "slurmctld.service"),
              "gpu": ("munge.service", "slurmd.service")}


def controller(nodes: list[NodeState]) -> str | None:
    """The node running slurmctld: the first service node (None in a lab without one)."""
    return next((n.name for n in nodes if n.role == "service"), None)


def gpu_nodes(nodes: list[NodeState]) -> list[NodeState]:
    return [n for n in nodes if n.role == "gpu"]


def slurm_conf(nodes: list[NodeState]) -> str:
    """The lab's /etc/slurm/slurm.conf, the same on every node."""
    ctld = controller(nodes)
    if ctld is None:
        raise ValueError("a Slurm lab needs a service node for slurmctld")
    address = next(n.address for n in nodes if n.name == ctld)
    lines = [
        "# kiln lab: written at install from the lab's node list (kiln/lab/slurm.py)",
        f"ClusterName={CLUSTER_NAME}",
        f"SlurmctldHost={ctld}({address})",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        "SlurmUser=slurm",
        "SlurmdUser=root",
        "StateSaveLocation=/var/lib/slurm/slurmctld",
        "SlurmdSpoolDir=/var/lib/slurm/slurmd",
        "SlurmctldPidFile=/run/slurmctld.pid",
        "SlurmdPidFile=/run/slurmd.pid",
        "SlurmctldLogFile=/var/log/slurm/slurmctld.log",
        "SlurmdLogFile=/var/log/slurm/slurmd.log",
        # No cgroups, no systemd in a lab node (the module's docstring).
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "SlurmdParameters=config_overrides",
        "SchedulerType=sched/backfill",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "ReturnToService=2",
        f"SlurmdTimeout={SLURMD_TIMEOUT}",
        "MpiDefault=none",
    ]
    for node in gpu_nodes(nodes):
        lines.append(f"NodeName={node.name} NodeAddr={node.address} {NODE_SHAPE} "
                     "State=UNKNOWN")
    members = ",".join(n.name for n in gpu_nodes(nodes))
    if members:
        lines.append(f"PartitionName={PARTITION} Nodes={members} Default=YES "
                     "MaxTime=INFINITE State=UP")
    return "\n".join(lines) + "\n"


CGROUP_CONF = """\
# kiln lab: no cgroup hierarchy in a lab node; nothing here uses cgroups (kiln/lab/slurm.py)
CgroupPlugin=cgroup/v1
"""


def new_munge_key(lab: Path) -> Path:
    """A fresh random munge key for this lab (0600 from the first byte); never printed."""
    path = Path(lab) / MUNGE_KEY
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(".munge.key.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(secrets.token_bytes(MUNGE_KEY_BYTES))
    os.replace(tmp, path)
    return path


def _ids(root: Path, user: str) -> tuple[int, int]:
    """uid and gid of `user` in the image's /etc/passwd (not the host's)."""
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return int(fields[2]), int(fields[3])
    raise LabError(f"the node image has no user {user!r} (is Slurm in the base image?)")


def install_node(lab: Path, root: Path, node: NodeState, nodes: list[NodeState]) -> None:
    """What imaging writes for Slurm on `node` (its root filesystem mounted at `root`)."""
    if controller(nodes) is None or not (root / "usr/sbin/munged").exists():
        return  # no controller in this lab, or an image without Slurm
    key_source = Path(lab) / MUNGE_KEY
    if not key_source.exists():
        new_munge_key(lab)
    munge_uid, munge_gid = _ids(root, "munge")
    slurm_uid, slurm_gid = _ids(root, "slurm")
    etc_slurm = root / "etc/slurm"
    etc_slurm.mkdir(mode=0o755, exist_ok=True)
    for name, text in (("slurm.conf", slurm_conf(nodes)), ("cgroup.conf", CGROUP_CONF)):
        (etc_slurm / name).write_text(text)
        (etc_slurm / name).chmod(0o644)
    key = root / "etc/munge/munge.key"
    key.unlink(missing_ok=True)
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    with os.fdopen(fd, "wb") as out:
        out.write(key_source.read_bytes())
    os.chown(key, munge_uid, munge_gid)
    for directory in ("var/lib/slurm/slurmctld", "var/lib/slurm/slurmd", "var/log/slurm"):
        (root / directory).mkdir(mode=0o755, parents=True, exist_ok=True)
        os.chown(root / directory, slurm_uid, slurm_gid)
    wants = root / WANTS
    wants.mkdir(parents=True, exist_ok=True)
    for unit in ROLE_UNITS[node.role]:
        link = wants / unit
        link.unlink(missing_ok=True)
        link.symlink_to(f"{UNIT_DIR}/{unit}")


def node_states(state: LabState) -> dict[str, str]:
    """`sinfo -N`'s state of each node (e.g. "idle", "down*"), read on the controller."""
    name = state.endpoints.get("slurm") or controller(state.nodes)
    if name is None:
        raise LabError("this lab has no Slurm controller (no service node)")
    out = _ssh(state, name, "sinfo -N -h -o '%N|%T'")
    found: dict[str, str] = {}
    for line in out.splitlines():
        node, _, status = line.partition("|")
        if node:
            found[node.strip()] = status.strip()
    return found


def wait_registered(state: LabState, nodes: list[str] | None = None,
                    timeout: float = 60.0) -> dict[str, str]:
    """Until every one of `nodes` (default: every GPU node) is idle in Slurm, as `sinfo`
    on the controller says; returns the states. LabError with the last states otherwise."""
    wanted = nodes if nodes is not None else [n.name for n in gpu_nodes(state.nodes)]
    deadline = time.monotonic() + timeout
    last: dict[str, str] | str = {}
    while True:
        try:
            last = node_states(state)
            if all(last.get(n) == "idle" for n in wanted):
                return last
        except LabError as exc:
            last = str(exc)
        if time.monotonic() > deadline:
            raise LabError(f"Slurm nodes not idle after {timeout:.0f} s: {last}")
        time.sleep(1)


def _ssh(state: LabState, node: str, command: str) -> str:
    address = state.node(node).address
    result = subprocess.run(
        ["ssh", "-i", state.ssh_key, "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
         "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "LogLevel=ERROR", f"{state.ssh_user}@{address}", command],
        capture_output=True, text=True, timeout=60,
    )
    if result.returncode != 0:
        raise LabError(f"{node}: {command!r} exited {result.returncode}: "
                       f"{result.stderr.strip()}")
    return result.stdout

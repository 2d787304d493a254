"""The lab's nodes: reachable by pyinfra, isolated, resettable, and gone after `kiln lab down`."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from kiln.lab import cluster, slurm
from kiln.lab.state import load_state

pytestmark = pytest.mark.lab


@pytest.fixture
def ssh(labtools):
    return labtools.ssh


@pytest.fixture
def kiln_lab(labtools):
    return labtools.kiln


def test_nodes_are_named_and_addressed_by_the_contract(lab, labtools, ssh, kiln_lab):
    names = [n.name for n in lab.nodes]
    assert names == [f"gpu-{i:03d}" for i in range(1, labtools.gpu_nodes + 1)] + [
        f"svc-{i:03d}" for i in range(1, labtools.service_nodes + 1)
    ]
    assert [n.address for n in lab.nodes] == [f"10.231.0.{10 + i}" for i in range(1, 10)]
    assert {n.role for n in lab.nodes if n.name.startswith("svc")} == {"service"}
    assert all(n.state == "running" for n in lab.nodes)
    status = json.loads(kiln_lab("status", "--json").stdout)
    assert [n["name"] for n in status["nodes"]] == names
    assert status["endpoints"]["vendor_repo"] == "http://10.231.0.1:8081/"


def test_pyinfra_reads_each_hostname_over_ssh(lab, labtools, ssh, kiln_lab):
    result = subprocess.run(
        [str(labtools.bin / "pyinfra"), "-y", "inventory/lab.py", "fact", "server.Hostname"],
        cwd=labtools.root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    output = result.stdout + result.stderr  # pyinfra logs its report to stderr
    block = re.search(r"--> Fact data for: server\.Hostname\s*(\{.*?\n\})", output, re.S)
    assert block, output
    assert json.loads(block.group(1)) == {n.name: n.name for n in lab.nodes}


def test_a_node_is_isolated_from_the_host_and_its_neighbours(lab, labtools, ssh, kiln_lab):
    out = ssh(
        lab,
        "gpu-002",
        "hostname; cat /proc/1/cmdline | tr '\\0' ' '; echo; "
        "readlink /proc/1/ns/pid /proc/1/ns/mnt /proc/1/ns/uts /proc/1/ns/net; "
        "ps -e --no-headers | wc -l; ip -4 -br addr show dev eth0; cat /proc/mounts",
    )
    lines = out.splitlines()
    assert lines[0] == "gpu-002"
    assert lines[1].strip() == "/usr/bin/python3 /run/kiln/init"
    host_ns = [os.readlink(f"/proc/self/ns/{kind}") for kind in ("pid", "mnt", "uts", "net")]
    node_ns = lines[2:6]
    assert all(a != b for a, b in zip(host_ns, node_ns, strict=True)), (host_ns, node_ns)
    # init, sshd and this session: a handful, not the host's hundreds of processes.
    assert int(lines[6]) < 20
    assert "10.231.0.12/24" in lines[7]
    # The node sees its own mounts only: none of the host's file systems.
    points = {line.split()[1] for line in lines[8:]}
    # The simulated HCAs' sysfs (hwsim/sysfs.py): /sys/class, /sys/devices and /sys/module
    # are the node's own tmpfs mounts holding binds of the kernel's entries and its own.
    sysfs = {point for point in points
             if point.startswith(("/sys/class", "/sys/devices", "/sys/module"))}
    assert {"/sys/class", "/sys/devices", "/sys/module", "/sys/class/infiniband",
            "/sys/class/net"} <= sysfs, sorted(sysfs)
    assert points - sysfs == {
        "/", "/proc", "/sys", "/dev", "/dev/null", "/dev/zero", "/dev/full", "/dev/random",
        "/dev/urandom", "/dev/tty", "/dev/pts", "/dev/shm", "/run", "/tmp", "/run/kiln-hw",
        "/run/kiln-hw-flash", "/usr/bin/dmesg",  # the simulated kernel log, bound by init
        "/proc/sys/kernel/random/boot_id",  # this boot's own (nodes.py LAUNCHER)
        "/proc/sys/kernel/osrelease",  # the kernel this boot runs, bound by init
    }  # fmt: skip
    # Hardware: read-only for the node; the flash spool is writable and lands on the host.
    probe = ssh(lab, "gpu-002", "touch /run/kiln-hw/x 2>&1; echo rc=$?", check=False)
    assert "Read-only file system" in probe and "rc=1" in probe
    ssh(lab, "gpu-002", "echo image > /run/kiln-hw-flash/probe")
    probe = Path(lab.lab_dir) / "hw/gpu-002/flash/probe"
    assert probe.read_text() == "image\n"
    probe.unlink()


def test_nodes_reach_each_other_by_name(lab, labtools, ssh, kiln_lab):
    out = ssh(lab, "gpu-001", "ping -c 1 -W 2 svc-001 >/dev/null && echo ok")
    assert out.strip() == "ok"


def test_units_run_under_the_systemctl_replacement(lab, labtools, ssh, kiln_lab):
    unit = (
        "[Unit]\nDescription=kiln test unit\n[Service]\nExecStart=/bin/sleep 600\n"
        "[Install]\nWantedBy=multi-user.target\n"
    )
    ssh(lab, "gpu-003", f"printf '{unit}' > /etc/systemd/system/kiln-probe.service")
    ssh(lab, "gpu-003", "systemctl enable --now kiln-probe")
    assert ssh(lab, "gpu-003", "systemctl is-active kiln-probe").strip() == "active"
    assert "sleep 600" in ssh(lab, "gpu-003", "ps -eo args")
    # Starting every enabled unit again (what boot does) leaves the node reachable.
    ssh(lab, "gpu-003", "systemctl default", check=False)
    assert ssh(lab, "gpu-003", "hostname").strip() == "gpu-003"


def test_reset_leaves_nothing_of_the_old_install(lab, labtools, ssh, kiln_lab):
    node = "gpu-004"
    ssh(lab, node, "echo old > /root/marker; mkdir -p /opt/old && touch /opt/old/file")
    old_host_key = ssh(lab, node, "cat /etc/ssh/ssh_host_ed25519_key.pub")
    cluster.reset_node(node)
    out = ssh(lab, node, "ls /root/marker /opt/old 2>&1; hostname; cat /etc/ssh/*ed25519*.pub")
    assert "No such file" in out and "marker" in out
    assert node in out.splitlines()
    assert old_host_key.strip() not in out


def test_power_off_and_on(lab, labtools, ssh, kiln_lab):
    node = "gpu-005"
    cluster.power_off(node)
    assert load_state().node(node).state == "off"
    status = json.loads(kiln_lab("status", "--json").stdout)
    assert {n["name"]: n["state"] for n in status["nodes"]}[node] == "off"
    assert ssh(lab, node, "true", check=False) == ""
    assert not os.path.ismount(Path(lab.lab_dir) / "nodes" / node / "merged")
    cluster.power_on(node, wait=True)
    assert ssh(lab, node, "hostname").strip() == node
    assert load_state().node(node).state == "running"


def _slurm_node(lab, ssh, node: str) -> dict[str, str]:
    """`scontrol -o show node` of one node, read on the controller, as its key=value fields."""
    line = ssh(lab, lab.endpoints["slurm"], f"scontrol -o show node {node}")
    return dict(re.findall(r"(\w+)=(\S*)", line))


def test_slurm_runs_every_gpu_node_idle_and_a_reimaged_or_power_cycled_one_rejoins(
        lab, labtools, ssh, kiln_lab):
    controller = lab.endpoints["slurm"]
    assert controller == "svc-001"
    gpus = [n.name for n in lab.nodes if n.role == "gpu"]
    states = slurm.wait_registered(lab, timeout=60)
    assert states == {name: "idle" for name in gpus}  # the service node is no Slurm node
    assert ssh(lab, controller, "sinfo -h -o '%P|%a|%D'").strip() == f"gpu*|up|{len(gpus)}"
    # Each role runs its own daemons, from the image's packages.
    def daemons(node: str) -> set[tuple[str, ...]]:
        out = ssh(lab, node, "ps -eo user=,comm=")
        return {tuple(line.split()) for line in out.splitlines()
                if "munge" in line or "slurm" in line}

    assert daemons(controller) == {("munge", "munged"), ("slurm", "slurmctld"),
                                   ("slurm", "slurmscriptd")}  # slurmctld's own helper
    assert daemons("gpu-001") == {("munge", "munged"), ("root", "slurmd")}
    # The lab's one munge key (0600 in the lab directory) is every node's, 0400 munge's.
    key = Path(lab.lab_dir) / "slurm" / "munge.key"
    assert key.stat().st_mode & 0o777 == 0o600
    digest = hashlib.sha256(key.read_bytes()).hexdigest()
    for node in (controller, "gpu-001"):
        out = ssh(lab, node, "stat -c '%a %U' /etc/munge/munge.key; "
                             "sha256sum < /etc/munge/munge.key")
        mode, checksum = out.splitlines()
        assert mode == "400 munge" and checksum.split()[0] == digest, node
    # Jobs run across GPU nodes.
    ran = ssh(lab, controller, "srun -N2 hostname").split()
    assert len(ran) == 2 and len(set(ran)) == 2 and set(ran) <= set(gpus)

    reimaged, cycled = "gpu-006", "gpu-007"
    before = {node: _slurm_node(lab, ssh, node)["SlurmdStartTime"] for node in (reimaged, cycled)}
    cluster.reset_node(reimaged)
    cluster.power_cycle(cycled, wait=True)
    assert ssh(lab, reimaged, "test -f /etc/slurm/slurm.conf && echo ok").strip() == "ok"
    deadline = time.monotonic() + 60
    while True:
        now = {node: _slurm_node(lab, ssh, node) for node in before}
        if all(now[n]["SlurmdStartTime"] != before[n] and now[n]["State"] == "IDLE"
               for n in before):
            break
        assert time.monotonic() < deadline, now
        time.sleep(1)
    assert slurm.wait_registered(lab, timeout=30) == {name: "idle" for name in gpus}


def test_a_second_up_is_refused(lab, labtools, ssh, kiln_lab):
    result = kiln_lab("up", "--nodes", "1", check=False)
    assert result.returncode == 1
    assert "already up" in result.stderr


def _lab_traces(lab_dir: str, netns_inodes: set[int]) -> dict[str, list[str]]:
    """What the lab could leave behind on the host."""
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    processes = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            net = os.stat(proc / "ns/net").st_ino
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if state != "Z" and (net in netns_inodes or "/run/kiln/init" in command):
            processes.append(f"{proc.name} {command}")
    return {
        "netns": [line for line in netns.splitlines() if line.startswith("kiln-")],
        "links": [line for line in links.splitlines()
                  if line.startswith(("kv-", "kilnbr0", "kilnrail")) or re.match(r"kr\d+-", line)],
        "mounts": [line for line in mounts if lab_dir in line or "kiln-" in line],
        "processes": processes,
    }


def test_down_leaves_no_namespace_mount_veth_or_process(lab, lab_shapes, ssh, kiln_lab):
    node_pids = []
    for node in lab.nodes:
        out = subprocess.run(["ip", "netns", "pids", node.netns], capture_output=True, text=True)
        node_pids += [int(pid) for pid in out.stdout.split()]
    assert node_pids, "the lab's nodes should have processes before down"
    commands = {Path(f"/proc/{pid}/comm").read_text().strip() for pid in node_pids
                if Path(f"/proc/{pid}/comm").exists()}
    assert {"munged", "slurmd", "slurmctld"} <= commands, commands  # gone after down too
    inodes = {os.stat(f"/run/netns/{node.netns}").st_ino for node in lab.nodes}
    before = _lab_traces(lab.lab_dir, inodes)
    assert len(before["netns"]) == len(lab.nodes) and before["processes"] and before["mounts"]
    # kilnbr0 and its veths, and the 8 rail bridges with one port per GPU node's HCA.
    gpus = sum(node.role == "gpu" for node in lab.nodes)
    assert len(before["links"]) == 1 + len(lab.nodes) + 8 + 8 * gpus, before["links"]

    kiln_lab("down")
    traces = _lab_traces(lab.lab_dir, inodes)
    assert traces == {"netns": [], "links": [], "mounts": [], "processes": []}
    alive = [pid for pid in node_pids if _alive(pid)]
    assert alive == []
    assert kiln_lab("status", check=False).returncode == 1
    # Idempotent: a second down finds nothing to do and says so without error.
    assert kiln_lab("down").returncode == 0

    lab_shapes.forget()  # the next module that needs a lab brings one up


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"

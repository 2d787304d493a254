"""Multi-node nccl-tests: real OpenMPI `mpirun` across lab nodes runs the simulated
`all_reduce_perf`, and the result reflects every participant's simulated NVLink and HCAs.

What a burn-in does on a real cluster, done here the same way: the vendor repository's
driver and nccl-tests on each node (then a power cycle, so the driver module loads), one
MPI SSH key shared by the participants, and one rank per GPU launched from the first node:

    mpirun -np 32 -N 8 --host gpu-001:8,… all_reduce_perf -b 8 -e 1G -f 2 -g 1

One rank per GPU (`-g 1`) is how NCCL jobs and multi-node burn-ins run on HGX H100 (a
process per GPU, as Slurm's `--ntasks-per-node=8` or `mpirun -N 8` lay them out); the
report is read with the parser written against real nccl-tests logs, mpirun's
`[1,0]<stdout>:` tags included. Expected bandwidths come from the simulator's model
(lab.hwsim.tools.all_reduce_perf and _perf) applied to each node's hardware state.
"""

from __future__ import annotations

import shlex
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest

from kiln.lab import cluster
from kiln.lab.hwsim.tools import _perf
from kiln.lab.hwsim.tools.all_reduce_perf import IB_RING_BUSBW
from kiln.lab.hwsim.view import load_view
from kiln.lab.state import LabState, load_state
from kiln.roles.burnin.parsers import busbw_at, parse_nccl_tests

pytestmark = pytest.mark.lab

PARTICIPANTS = 4
GPUS_PER_NODE = 8
LARGEST = 1 << 30  # -e 1G: large enough that latency is under 1% of the time
SOURCES = "deb [signed-by=/etc/apt/keyrings/kiln-lab.asc] http://10.231.0.1:8081/apt kilnlab main\n"
APT = "DEBIAN_FRONTEND=noninteractive apt-get -q -y -o Dpkg::Use-Pty=0"
PACKAGES = "nvidia-driver-570-server-open nccl-tests"
MPI_KEY = "/root/.ssh/kiln_mpi"
MPI_KEY_COMMENT = "kiln-burnin-mpi"


def node_ssh(state: LabState, node: str, command: str) -> subprocess.CompletedProcess[str]:
    """One command on a node as root with the lab's key; its exit status is the caller's."""
    return subprocess.run(
        [
            "ssh", "-i", state.ssh_key, "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", f"root@{state.node(node).address}", command,
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=300,
    )


def _install(state: LabState, node: str, key: str) -> None:
    result = node_ssh(
        state,
        node,
        "mkdir -p /etc/apt/keyrings && "
        f"printf %s {shlex.quote(key)} > /etc/apt/keyrings/kiln-lab.asc && "
        f"printf %s {shlex.quote(SOURCES)} > /etc/apt/sources.list.d/kiln-lab.list && "
        f"{APT} update && {APT} install {PACKAGES}",
    )
    assert result.returncode == 0, f"{node}: install failed\n{result.stdout}{result.stderr}"


def _share_mpi_key(state: LabState, nodes: list[str], labtools: SimpleNamespace) -> None:
    """mpirun starts its daemons over SSH (and they start each other, as a tree): every
    participant gets the job's key pair, trusts it, and accepts the others' host keys on
    first use, as a burn-in role sets up on a real cluster."""
    first = nodes[0]
    labtools.ssh(state, first, f"rm -f {MPI_KEY} {MPI_KEY}.pub && "
                 f"ssh-keygen -q -t ed25519 -N '' -C {MPI_KEY_COMMENT} -f {MPI_KEY}")
    private = labtools.ssh(state, first, f"cat {MPI_KEY}")
    public = labtools.ssh(state, first, f"cat {MPI_KEY}.pub")
    config = "".join(
        f"Host {node}\n    IdentityFile {MPI_KEY}\n    StrictHostKeyChecking accept-new\n"
        "    BatchMode yes\n    LogLevel ERROR\n" for node in nodes
    )
    for node in nodes:
        labtools.ssh(
            state,
            node,
            f"umask 077 && printf %s {shlex.quote(private)} > {MPI_KEY} && "
            f"printf %s {shlex.quote(public)} > {MPI_KEY}.pub && "
            f"printf %s {shlex.quote(public)} >> /root/.ssh/authorized_keys && "
            f"printf %s {shlex.quote(config)} > /root/.ssh/config",
        )


def _cleanup(state: LabState, node: str) -> None:
    node_ssh(
        state,
        node,
        f"{APT} purge 'nvidia-*' 'libnvidia-*' nccl-tests libnccl2 kiln-hwsim-common; "
        "rm -f /etc/apt/sources.list.d/kiln-lab.list /root/.ssh/config "
        f"{MPI_KEY} {MPI_KEY}.pub /root/.ssh/known_hosts; "
        f"sed -i '/ {MPI_KEY_COMMENT}$/d' /root/.ssh/authorized_keys",
    )


@pytest.fixture(scope="module")
def job(lab, labtools) -> SimpleNamespace:
    """Four GPU nodes ready for a multi-node nccl-tests run; `job.run(*args)` runs it."""
    state = load_state()  # the session's lab may have been brought up again since
    nodes = [n.name for n in state.nodes if n.role == "gpu"][:PARTICIPANTS]
    assert len(nodes) == PARTICIPANTS, f"the lab has fewer than {PARTICIPANTS} GPU nodes"
    key = (Path(state.lab_dir) / "vendor/keys/lab-archive.asc").read_text()
    with ThreadPoolExecutor(max_workers=PARTICIPANTS) as pool:
        list(pool.map(lambda node: _install(state, node, key), nodes))
    for node in nodes:  # the driver module the package installed loads at boot
        cluster.power_cycle(node, wait=True)
    _share_mpi_key(state, nodes, labtools)

    def run(*args: str, ranks_per_node: int = GPUS_PER_NODE) -> SimpleNamespace:
        hosts = ",".join(f"{node}:{ranks_per_node}" for node in nodes)
        command = (
            f"mpirun --allow-run-as-root --tag-output -np {PARTICIPANTS * ranks_per_node} "
            f"-N {ranks_per_node} --host {hosts} "
            "--mca btl_tcp_if_include eth0 --mca oob_tcp_if_include eth0 "
            f"all_reduce_perf {' '.join(args)}"
        )
        result = node_ssh(state, nodes[0], command)
        return SimpleNamespace(command=command, returncode=result.returncode,
                               stdout=result.stdout, stderr=result.stderr)

    def expected_peak() -> float:
        """The model's busbw for these participants as their hardware is now: the ring over
        every node's rails, held back by the slowest node's HCAs or NVLink."""
        shares = []
        for node in nodes:
            view = load_view(Path(state.lab_dir) / "hw" / node)
            shares.append(min(_perf.ib_factor(view), _perf.nvlink_factor(view)))
        return IB_RING_BUSBW * min(shares)

    yield SimpleNamespace(nodes=nodes, run=run, expected_peak=expected_peak)
    for node in nodes:
        labtools.kiln("fault", node, "--clear", check=False)
        _cleanup(state, node)


def _report(result: SimpleNamespace) -> dict:
    try:
        return parse_nccl_tests(result.stdout)
    except Exception as exc:
        raise AssertionError(f"{result.command}\nexit {result.returncode}\n"
                             f"{result.stdout}{result.stderr}") from exc


def _largest_busbw(report: dict) -> float:
    busbw = busbw_at(report, LARGEST)
    assert busbw is not None, "the 1 GiB row is missing"
    return busbw


def _within_model(busbw: float, peak: float) -> bool:
    # At 1 GiB the model's fixed latency costs under 1%; its jitter is ±0.5%.
    return 0.97 * peak <= busbw <= 1.01 * peak


@pytest.fixture(scope="module")
def healthy(job) -> SimpleNamespace:
    """The healthy 4-node run: the full size sweep, one rank per GPU."""
    result = job.run("-b", "8", "-e", "1G", "-f", "2", "-g", "1")
    report = _report(result)
    assert result.returncode == 0, result.stderr
    return SimpleNamespace(report=report, busbw=_largest_busbw(report))


def test_one_rank_per_gpu_across_four_nodes(job, healthy):
    report = healthy.report
    assert report["complete"] and report["out_of_bounds"] == 0 and report["failures"] == []
    assert report["params"]["ngpus"] == 1
    assert [(r["rank"], r["host"], r["device"]) for r in report["ranks"]] == [
        (i * GPUS_PER_NODE + d, node, d) for i, node in enumerate(job.nodes)
        for d in range(GPUS_PER_NODE)
    ]
    # One process per GPU: 8 distinct processes on every node, each on its own GPU.
    for node in job.nodes:
        mine = [r for r in report["ranks"] if r["host"] == node]
        assert len({r["pid"] for r in mine}) == len({r["bus_id"] for r in mine}) == GPUS_PER_NODE
    assert [row["size"] for row in report["rows"]] == [8 << i for i in range(28)]
    busbws = [row["out_of_place"]["busbw"] for row in report["rows"]]
    assert busbws == sorted(busbws)  # bandwidth grows with the message size
    assert job.expected_peak() == IB_RING_BUSBW  # nothing holds a healthy fabric back
    assert _within_model(healthy.busbw, IB_RING_BUSBW)


def test_one_process_per_node_driving_eight_gpus_agrees(job, healthy):
    result = job.run("-b", "1G", "-e", "1G", "-g", "8", ranks_per_node=1)
    report = _report(result)
    assert result.returncode == 0
    assert len(report["ranks"]) == PARTICIPANTS * GPUS_PER_NODE
    assert len({r["pid"] for r in report["ranks"] if r["host"] == job.nodes[1]}) == 1
    assert _largest_busbw(report) == pytest.approx(healthy.busbw, rel=1e-3)


FAULTS = {
    # One slow rail on the third node: NCCL stripes over every rail, so the ring slows.
    "hca-rate": (2, ["hca-rate", "hca=1", "rate=200"]),
    # One rail down on the second node: the ring runs on that node's 7 remaining rails.
    "hca-port-down": (1, ["hca-port-down", "hca=6"]),
    # A degraded NVLink on the last node's last GPU (the job's last rank).
    "nvlink-degraded": (3, ["nvlink-degraded", "gpu=7", "factor=0.6"]),
}


@pytest.mark.parametrize("kind", FAULTS)
def test_a_fault_on_one_participant_lowers_the_whole_runs_busbw(job, healthy, labtools, kind):
    """The fault is on a node that is not rank 0's: what rank 0 reports is what every
    participant's hardware allows."""
    index, fault = FAULTS[kind]
    node = job.nodes[index]
    labtools.kiln("fault", node, *fault)
    try:
        expected = job.expected_peak()
        result = job.run("-b", "256M", "-e", "1G", "-f", "2", "-g", "1")
    finally:
        labtools.kiln("fault", node, "--clear")
    report = _report(result)
    assert result.returncode == 0 and report["out_of_bounds"] == 0
    busbw = _largest_busbw(report)
    assert expected < IB_RING_BUSBW
    assert _within_model(busbw, expected)
    assert busbw / healthy.busbw == pytest.approx(expected / IB_RING_BUSBW, rel=0.02)
    print(f"{kind} on {node}: busbw {busbw:.2f} GB/s at 1 GiB, "
          f"{busbw / healthy.busbw:.3f} of healthy ({healthy.busbw:.2f})")


def test_wrong_results_on_one_participant_fail_the_run(job, labtools):
    node = job.nodes[1]
    labtools.kiln("fault", node, "gpu-wrong-results", "gpu=3")
    try:
        result = job.run("-b", "8", "-e", "1G", "-f", "2", "-g", "1")
    finally:
        labtools.kiln("fault", node, "--clear")
    report = _report(result)
    assert result.returncode != 0
    assert report["complete"] and report["out_of_bounds_ok"] is False
    assert report["out_of_bounds"] > 0
    wrong = [row["out_of_place"]["wrong"] for row in report["rows"]]
    assert wrong[-1] > 0 and all(w > 0 for w, row in zip(wrong, report["rows"], strict=True)
                                 if row["count"])


def test_faults_cleared_give_the_healthy_result_back(job, healthy):
    result = job.run("-b", "1G", "-e", "1G", "-g", "1")
    assert result.returncode == 0
    assert _largest_busbw(_report(result)) == pytest.approx(healthy.busbw, rel=1e-3)

"""Burn-in on the lab: the real pyinfra run of roles/burnin on 8 deployed GPU nodes (after
the stages it stands on), real OpenMPI `mpirun` across the nodes with the burn-in's own SSH
key, the simulated GPU and HCA tools answering. Then three faults that raise no error:

    gpu-002  GPU 3 computes wrong results
    gpu-004  GPU 5's NVLink trains at full width but carries 60% under load
    gpu-006  HCA mlx5_1 at 200 Gb/s (half rate)

The burn-in stage names each by its single-node runs with the right class (and the HCA);
the five healthy nodes then pass the multi-node rounds. The multi-node part alone over all
eight (deploy/burnin.py, kiln_burnin_pairwise_only) must single out exactly the three with
their class and never a healthy partner (here for one seeded pairing, within the suite's
time budget; bench/burnin_soak.py repeats it for twenty). A preview writes
nothing.

The stages run once for this module and tests/lab/test_health.py (tests/lab/conftest.py,
`gpu_stages`); this module clears its faults when it ends.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from contextlib import closing
from pathlib import Path

import pytest
from lab_data import lab_apt_data

from kiln.core.ledger import latest_results
from kiln.lab.credentials import read_lab_secrets

pytestmark = pytest.mark.lab

BURNIN = "deploy/burnin.py"
GPU_NODES = [f"gpu-00{i}" for i in range(1, 9)]
FAULTS = {
    "gpu-002": ("gpu-wrong-results", "gpu=3"),
    "gpu-004": ("nvlink-degraded", "gpu=5", "factor=0.6"),
    "gpu-006": ("hca-rate", "hca=1", "rate=200"),
}
BAD = set(FAULTS)
CHECKS = ("burnin-dcgm", "burnin-nccl-single", "burnin-ib-write-bw", "burnin-nccl-multi")
# One seed here (the suite's time budget); bench/burnin_soak.py runs twenty.
PAIRWISE_SEEDS = (11,)


class Burnin:
    def __init__(self, state, labtools):
        self.state, self.labtools = state, labtools
        self.ledger = Path(state.lab_dir) / "kiln.db"
        self.outputs: list[str] = []  # everything every run of this module printed

    def pyinfra(self, deploy: str, *args: str, apply: bool = True
                ) -> subprocess.CompletedProcess[str]:
        command = [str(self.labtools.bin / "pyinfra"), *(["-y"] if apply else ["--dry"]),
                   "inventory/lab.py", deploy, *lab_apt_data(self.state), *args]
        result = subprocess.run(command, cwd=self.labtools.root, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, timeout=900)
        self.outputs.append(result.stdout)
        return result

    def kiln(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.labtools.bin / "kiln"), *args], cwd=self.labtools.root,
                              capture_output=True, text=True, timeout=120)

    def results(self, node: str, check: str) -> list:
        return latest_results(self.ledger, node, (check,))

    def rows(self) -> int:
        # Closed here, not left to the garbage collector: an open connection in this process
        # loses its locks when the credential scan closes the files it read (POSIX locks are
        # per process), and then a read after the next run finds the ledger "malformed".
        with closing(sqlite3.connect(self.ledger)) as db:
            return db.execute("SELECT COUNT(*) FROM checks").fetchone()[0]


def evidence(row) -> dict:
    return json.loads(row.evidence or "{}")


@pytest.fixture(scope="module")
def burn(lab_shapes, labtools, request):
    state = lab_shapes.deployed()
    burn = Burnin(state, labtools)
    yield burn
    # The faults are cleared: the lab goes on to test_health as the stages left it, or is
    # forgotten (by hand_on_gpu_stages, or here when a fault would not clear).
    cleared = [burn.kiln("lab", "fault", node, "--clear") for node in FAULTS]
    if any(out.returncode != 0 for out in cleared):
        lab_shapes.forget()
    else:
        lab_shapes.hand_on_gpu_stages(request)


@pytest.fixture(scope="module")
def stages(burn, gpu_stages):
    """Bring-up's stages up to burn-in on every GPU node (shared with test_health): all
    healthy."""
    burn.seconds = gpu_stages.seconds
    burn.outputs.append(gpu_stages.result.stdout)
    return gpu_stages.result


@pytest.fixture(scope="module")
def faulted(burn, stages):
    assert stages.returncode == 0, stages.stdout[-6000:]
    for node, (kind, *fields) in FAULTS.items():
        out = burn.kiln("lab", "fault", node, kind, *fields)
        assert out.returncode == 0, out.stdout + out.stderr
    started = time.monotonic()
    result = burn.pyinfra(BURNIN, "--data", "kiln_burnin_seed=2")
    burn.faulted_seconds = time.monotonic() - started
    return result


def test_healthy_nodes_pass_every_burn_in_check(burn, stages):
    assert stages.returncode == 0, stages.stdout[-6000:]
    for node in GPU_NODES:
        for check in CHECKS:
            rows = burn.results(node, check)
            assert rows, f"{node}: no {check} result"
            assert {str(r.status) for r in rows} == {"OK"}, (node, check, rows)
    # one ib_write_bw result per HCA, at the rate the SKU's rails give
    hcas = burn.results("gpu-001", "burnin-ib-write-bw")
    assert len(hcas) == 8
    assert all(evidence(r)["bw_average_gbps"] > 360 for r in hcas)
    single = evidence(burn.results("gpu-001", "burnin-nccl-single")[0])
    assert single["busbw_gbps"] > 360 and single["wrong"] == 0
    multi = evidence(burn.results("gpu-001", "burnin-nccl-multi")[0])
    assert multi["runs"][0]["round"] == 1 and len(multi["runs"][0]["partners"]) == 1
    assert multi["runs"][0]["busbw_gbps"] > 340
    assert "burn-in: 1 round(s), 8 good, 0 bad" in stages.stdout


def test_the_single_node_runs_name_each_fault_with_its_class(burn, faulted):
    assert faulted.returncode != 0
    [nccl] = burn.results("gpu-002", "burnin-nccl-single")
    assert str(nccl.status) == "CRITICAL" and evidence(nccl)["class"] == "wrong-results"
    assert "wrong results" in nccl.detail
    [nccl] = burn.results("gpu-004", "burnin-nccl-single")
    assert str(nccl.status) == "CRITICAL" and evidence(nccl)["class"] == "below-floor"
    bad_hcas = [r for r in burn.results("gpu-006", "burnin-ib-write-bw")
                if str(r.status) != "OK"]
    assert [r.subject_text for r in bad_hcas] == ["node gpu-006: HCA mlx5_1"]
    assert evidence(bad_hcas[0])["class"] == "below-floor"
    for node in BAD:
        assert f"[{node}] node {node}: burn-in (single node):" in faulted.stdout


def test_the_healthy_five_pass_the_multi_node_rounds_without_the_bad_three(burn, faulted):
    for node in set(GPU_NODES) - BAD:
        [multi] = burn.results(node, "burnin-nccl-multi")
        assert str(multi.status) == "OK", (node, multi.detail)
        partners = {p for run in evidence(multi)["runs"] for p in run["partners"]}
        assert not partners & BAD  # a node that failed alone never takes part
    assert "burn-in: " in faulted.stdout and "5 good, 0 bad" in faulted.stdout


@pytest.mark.parametrize("seed", PAIRWISE_SEEDS)
def test_the_pairwise_rounds_single_out_exactly_the_bad_three(burn, faulted, seed):
    result = burn.pyinfra(BURNIN, "--data", "kiln_burnin_pairwise_only=true",
                          "--data", f"kiln_burnin_seed={seed}")
    assert result.returncode != 0
    classes = {}
    for node in GPU_NODES:
        [multi] = burn.results(node, "burnin-nccl-multi")
        if str(multi.status) != "OK":
            classes[node] = (str(multi.status), evidence(multi)["class"])
    assert classes == {"gpu-002": ("CRITICAL", "wrong-results"),
                       "gpu-004": ("CRITICAL", "below-floor"),
                       "gpu-006": ("CRITICAL", "below-floor")}, result.stdout[-4000:]


def test_a_preview_writes_nothing(burn, faulted):
    before = burn.rows()
    result = burn.pyinfra(BURNIN, apply=False)
    assert result.returncode == 0, result.stdout[-3000:]
    assert burn.rows() == before


def secret_values(lab_dir: Path) -> set[str]:
    """The lab's random credentials: every password and each part of the MAAS API key
    (usernames are not secret)."""
    secrets = read_lab_secrets(lab_dir)
    values = {entry["password"] for entry in secrets.values() if "password" in entry}
    values |= set(secrets["maas"]["api_key"].split(":"))
    return {value for value in values if len(value) >= 8}


def test_no_lab_credential_appears_in_anything_the_runs_printed_or_stored(burn, faulted):
    """Everything this module's runs printed, the ledger (with its write-ahead log), the
    pool file, the runs' reports and the burn-in state directory (its key pair and host
    lists)."""
    lab_dir = Path(burn.state.lab_dir)
    secrets = secret_values(lab_dir)
    assert len(secrets) >= 4, "the lab's credentials were not read"
    stored = [path for path in lab_dir.glob("kiln.db*")]
    stored += [lab_dir / "pool.yaml", *sorted((lab_dir / "burnin-state").rglob("*"))]
    stored += sorted((lab_dir / "reports").glob("run-*"))
    texts = {f"run {number}": output for number, output in enumerate(burn.outputs)}
    for path in stored:
        if path.is_file():
            texts[str(path)] = path.read_bytes().decode("utf-8", errors="replace")
    assert len(burn.outputs) >= 4 and any("kiln.db" in name for name in texts)
    assert any(name.endswith(".md") for name in texts), "deploy/burnin.py wrote no report"
    leaks = [(name, "..." + secret[-3:]) for name, text in texts.items() for secret in secrets
             if secret in text]
    assert leaks == []

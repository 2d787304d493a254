"""`kiln parse TOOL FILE` prints the parser's JSON; bad input exits 1 naming file and line."""

import json
from pathlib import Path

import pytest

from kiln.cli import main

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["parse", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_nvidia_smi_q(capsys):
    path = FIXTURES / "nvidia-smi" / "q.h100x8.535.161.08.txt"
    code, out, _ = run(capsys, "nvidia-smi-q", str(path))
    assert code == 0
    data = json.loads(out)
    assert len(data["gpus"]) == 8
    assert data["gpus"][0]["vbios_version"] == "96.00.74.00.0D"


def test_nccl_tests(capsys):
    path = FIXTURES / "nccl-tests" / "all_reduce_perf.a100x8.superbench.txt"
    code, out, _ = run(capsys, "nccl-tests", str(path))
    assert code == 0
    rows = json.loads(out)["rows"]
    assert rows[-1]["size"] == 8 * 2**30 and rows[-1]["out_of_place"]["busbw"] == 235.26


@pytest.mark.parametrize("tool, path", [
    ("nvidia-smi-nvlink", "nvidia-smi/nvlink-status.a100.txt"),
    ("ibstat", "ibstat/ibstat.h100.all-active.txt"),
    ("mlxfwmanager", "mlxfwmanager/query.h100x8.update-required.txt"),
    ("mlxconfig", "mlxconfig/q.cx7.ib.txt"),
    ("dcgmi-diag", "dcgmi/diag-r3-j.h100x8.gpu3-fail.json"),
    ("dmesg", "dmesg/dmesg-with-xid-119.log"),
    ("ib-write-bw", "perftest/ib_write_bw.ndr.report_gbits.txt"),
])
def test_every_tool_on_its_fixture(capsys, tool, path):
    code, out, err = run(capsys, tool, str(FIXTURES / path))
    assert (code, err) == (0, "")
    assert json.loads(out)


def test_csv(capsys, tmp_path):
    capture = tmp_path / "query.csv"
    capture.write_text("index, name, memory.total [MiB]\n0, NVIDIA H100 80GB HBM3, 81559 MiB\n")
    code, out, _ = run(capsys, "nvidia-smi-csv", str(capture))
    assert code == 0
    assert json.loads(out) == [{"index": 0, "name": "NVIDIA H100 80GB HBM3",
                                "memory.total": 81559}]


def test_garbage_names_file_and_line(capsys, tmp_path):
    capture = tmp_path / "not-ibstat.txt"
    capture.write_text("CA 'mlx5_0'\n\tCA type: MT4129\n???\n")
    code, out, err = run(capsys, "ibstat", str(capture))
    assert code == 1 and out == ""
    assert err.startswith(f"kiln: {capture}: line 3:")


def test_unknown_tool_lists_known(capsys, tmp_path):
    code, _, err = run(capsys, "nvidia-smi-x", str(tmp_path / "x"))
    assert code == 1
    assert "unknown TOOL 'nvidia-smi-x'" in err and "nccl-tests" in err


# Every parser of kiln/parse.py against every real capture of its tool in tests/fixtures
# (tests/fixtures/README.txt says which are real; the hand-written ones are left out here).
REAL_CAPTURES = {
    "nvidia-smi-q": ["nvidia-smi/q.h100x8.535.161.08.txt", "nvidia-smi/q.a10x1.535.129.03.txt",
                     "nvidia-smi/q.rtx4090x8.535.154.05.txt",
                     "nvidia-smi/q-d-page-retirement.x8.535.86.10.txt"],
    "nvidia-smi-csv": ["nvidia-smi/query-gpu.h100x8.535.161.07.csv"],
    "nvidia-smi-nvlink": ["nvidia-smi/nvlink-status.a100.txt",
                          "nvidia-smi/nvlink-status.a100.gpu7.txt"],
    "ibstat": ["ibstat/ibstat.h100.all-active.txt", "ibstat/ibstat.a100.all-active.txt",
               "ibstat/ibstat.h100.ib-ndr.all-active.txt"],
    "ib-sysfs": [],  # a directory tree: test_parsers_infiniband.test_sysfs_tree reads it
    "nccl-tests": ["nccl-tests/all_reduce_perf.a100x8.single-node.gcm.txt",
                   "nccl-tests/all_reduce_perf.a100x8.superbench.txt"],
    "ib-write-bw": ["perftest/ib_write_bw.loopback-8M.hdr.superbench.txt",
                    "perftest/ib_write_bw.loopback-all-sizes.hdr.superbench.txt",
                    "perftest/ib_write_bw.use-cuda-dmabuf.h200-roce.txt"],
    "mlxfwmanager": [],  # no real capture in the shared fixture set
    "mlxconfig": ["mlxconfig/mstconfig-q.connectx6.trimmed.txt"],
    "dcgmi-diag": ["dcgmi/diag-r1.dcgm3.t4.pass.json", "dcgmi/diag-r2.dcgm3.t4.pass.json",
                   "dcgmi/diag-r3.dcgm3.t4.pass.json", "dcgmi/diag-r2.dcgm3.3.3.a100x8.pass.txt"],
    "dmesg": ["dmesg/dmesg-with-xid-119.log", "dmesg/kmsg-peermem.log",
              "dmesg/boot.hgx-h100.550.90.07.decode-iso.log", "dmesg/xid13-xid43.decode-iso.log",
              "dmesg/peermem-error.decode-iso.log", "dmesg/kmsg-nvswitch-open.log",
              "dmesg/imbue-doctest-lines.log"],
}


def test_every_parser_has_its_real_captures_listed():
    from kiln.parse import PARSERS

    assert set(REAL_CAPTURES) == set(PARSERS)


@pytest.mark.parametrize("tool, path", [
    (tool, path) for tool, paths in REAL_CAPTURES.items() for path in paths])
def test_every_parser_reads_every_real_capture(capsys, tool, path):
    code, out, err = run(capsys, tool, str(FIXTURES / path))
    assert (code, err) == (0, "")
    assert json.loads(out)


def test_a_failed_tool_run_is_named(capsys):
    path = FIXTURES / "ibstat" / "ibstat.a100.ibpanic-exit-255.txt"
    code, out, err = run(capsys, "ibstat", str(path))
    assert code == 1 and "ibstat failed after 8 CA(s): ibpanic:" in err


def test_a_launcher_failure_is_named(capsys, tmp_path):
    capture = tmp_path / "nccl.log"
    capture.write_text("srun: error: Unable to allocate resources: Invalid account\n")
    code, out, err = run(capsys, "nccl-tests", str(capture))
    assert code == 1
    assert err.startswith(f"kiln: {capture}: line 1: srun failed: srun: error: Unable")

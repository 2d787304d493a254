"""The burn-in parsers on output as it really comes (issue 15): real captures from public
repositories (tests/fixtures/nccl-tests/README.txt says whence: nccl-tests 2.9-era and 2.18
text under mpirun --tag-output, a 2.19.7 -J JSON report from 8x H100, mpirun's and nccl-tests'
own failures), excerpts cut from a log (header and rows, rows alone), and the layouts recent
nccl-tests print. Where a test changes a capture (a row cut, a line added) it says so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kiln.core.parsing import LauncherError, ParseError
from kiln.roles.burnin.parsers import (
    busbw_at,
    crash_lines,
    nccl_version_from_code,
    parse_ib_write_bw,
    parse_nccl_tests,
    parse_nccl_tests_json,
    perftest_errors,
    strip_launcher_prefix,
)

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures"
EFA = "all_reduce_perf.a100x16.efa.mpirun-tagged.aws-efa-eks.txt"    # nccl 2.9.9, old layout
RTX = "all_reduce_perf.rtx5090x2.socket.mpirun-tagged.nccl-ebpf.txt"  # nccl-tests 2.18.0
JSON_REPORT = "all_reduce_perf.h100x8.16G.json-report.chm.json"      # -J, JSON version 3
TOO_MANY_GPUS = "all_reduce_perf.too-many-gpus.mpirun.chm.txt"
BAD_ARGS = "mpirun.bad-arguments.h100x8.chm.txt"
NO_SLOTS = "mpirun.not-enough-slots.gcm.txt"
PPR = "mpirun.ppr-exceeded.chm.txt"
GCM = "all_reduce_perf.a100x8.single-node.gcm.txt"
SUPERBENCH = "all_reduce_perf.a100x8.superbench.txt"


def read(name: str) -> str:
    return (FIXTURES / "nccl-tests" / name).read_text()


# --- real captures ---------------------------------------------------------------------------

def test_two_nodes_under_mpirun_tag_output_with_nccl_info_from_every_rank():
    result = parse_nccl_tests(read(EFA))
    assert result["format"] == "text" and result["layout"] == "error"
    assert result["nccl_version"] == "2.9.9+cuda11.2"  # "[1,0]<stdout>:NCCL version …"
    assert len(result["ranks"]) == 16
    assert {r["host"] for r in result["ranks"]} == {"nccl-tests-efa-16-worker-0",
                                                    "nccl-tests-efa-16-worker-1"}
    assert [r["size"] for r in result["rows"]] == [2**k for k in range(3, 33)]
    assert result["rows"][-1]["out_of_place"] == {"time_us": 183834.0, "algbw": 23.36,
                                                  "busbw": 43.81, "wrong": None, "error": 5e-07}
    assert result["avg_busbw"] == 11.2432 and result["complete"] is True
    # the launcher's `set -x` trace is untagged: mpirun's own, not the table's
    assert result["launcher_messages"][0] == "+ POD_NAME=nccl-tests-efa-16-worker-1"
    assert len(result["launcher_messages"]) == 10 and result["launcher_errors"] == []
    assert result["excerpt"] is False and result["columns"] == "header"


def test_nccl_tests_2_18_header_lines_and_pci_bus_ids():
    result = parse_nccl_tests(read(RTX))
    assert result["tests_version"] == "2.18.0"
    assert result["collective"] == "all_reduce_perf_mpi"
    assert result["nccl_version"] == "2.29.7"  # from nccl-library=22907: no NCCL version line
    assert result["ranks"][1] == {"rank": 1, "group": 0, "pid": 2994448, "host": "lab",
                                  "device": 0, "bus_id": "0000:02:00",
                                  "device_name": "NVIDIA GeForce RTX 5090"}
    assert result["params"]["warmup_iters"] == 10 and result["params"]["iters"] == 50
    assert busbw_at(result, 134217728) == 2.30 and result["avg_busbw"] == 1.57614
    # mpirun's own X11 complaint, untagged in a tagged capture
    assert result["launcher_messages"] == [
        "Authorization required, but no authorization protocol specified"] * 2


def test_the_json_report_reads_into_the_same_shape():
    result = parse_nccl_tests(read(JSON_REPORT))
    assert result == parse_nccl_tests_json(read(JSON_REPORT))
    assert result["format"] == "json" and result["json_version"] == 3
    assert result["nccl_version"] == "2.23.4"  # nccl_version 22304
    assert result["collective"] == "all_reduce_perf"
    assert result["params"] == {"nthread": 1, "ngpus": 1, "minbytes": 17179869184,
                                "maxbytes": 17179869184, "step": 2, "warmup_iters": 1,
                                "iters": 20, "agg_iters": 1, "validation": 1, "graph": 0}
    assert len(result["ranks"]) == 8
    assert result["ranks"][5] == {"rank": 5, "group": 0, "pid": 54, "host": "nccl-json",
                                  "device": 5, "bus_id": "000a:00:00",
                                  "device_name": "NVIDIA H100 80GB HBM3"}
    (row,) = result["rows"]
    assert (row["size"], row["count"], row["type"], row["redop"], row["root"]) == (
        17179869184, 4294967296, "float", "sum", -1)
    assert row["out_of_place"] == {"time_us": 62517.395194, "algbw": 274.801423,
                                   "busbw": 480.902491, "wrong": 0, "error": None}
    assert row["in_place"]["busbw"] == 479.686103
    assert (result["out_of_bounds"], result["out_of_bounds_ok"]) == (0, True)
    assert result["avg_busbw"] == 480.294297 and result["avg_busbw_check"] is None
    assert result["complete"] is True and result["last_error"] is None
    assert busbw_at(result, 16 * 2**30) == 480.902491


def test_json_report_as_nccl_tests_writes_it_unindented_and_before_2_17_9():
    doc = json.loads(read(JSON_REPORT))
    # nccl-tests' own writer: no whitespace, doubles with %lf, booleans as strings;
    # before 2.17.9 two keys were misspelt
    doc["average_bus_bandwidith"] = {"bandwidith": 480.294297, "okay": "unchecked"}
    del doc["average_bus_bandwidth"]
    compact = json.dumps(doc, separators=(",", ":"))
    result = parse_nccl_tests(compact)
    assert result["avg_busbw"] == 480.294297 and result["complete"] is True
    # a NaN comes as "nan", an infinity as a bare inf (not JSON): both read as unknown
    text = compact.replace('"nwrong":0.0', '"nwrong":"nan"', 1).replace(
        '"alg_bw":274.801423', '"alg_bw":inf', 1)
    row = parse_nccl_tests(text)["rows"][0]["out_of_place"]
    assert row["wrong"] is None and row["algbw"] is None and row["busbw"] == 480.902491


def test_json_report_cut_short_gives_what_it_holds():
    doc = json.loads(read(JSON_REPORT))
    doc["results"].append({**doc["results"][0], "size": 2 * 17179869184})
    compact = json.dumps(doc, separators=(",", ":"))
    cut = compact[:compact.index('"out_of_bounds"')]  # killed after the last row
    result = parse_nccl_tests(cut)
    assert [r["size"] for r in result["rows"]] == [17179869184, 34359738368]
    assert result["complete"] is False and result["avg_busbw"] is None
    mid_row = compact[:compact.index('"in_place"', compact.index('34359738368'))]
    assert [r["size"] for r in parse_nccl_tests(mid_row)["rows"]] == [17179869184, 34359738368]
    with pytest.raises(ParseError, match="cut off before its first record"):
        parse_nccl_tests('{"version":3,"start_time":"2026-09-17 15:53:01","args":["/usr/l')
    with pytest.raises(ParseError, match="not an nccl-tests report"):
        parse_nccl_tests('{"hello": "world"}')


def test_nccl_version_codes():
    assert nccl_version_from_code(22907) == "2.29.7"
    assert nccl_version_from_code(21803) == "2.18.3"
    assert nccl_version_from_code(2804) == "2.8.4"


def test_nccl_tests_own_failure_before_its_table_is_the_tools_not_the_launchers():
    # mpirun relays the exit ("Primary job terminated normally", "mpirun detected that …"),
    # but nccl-tests said why: "Invalid number of GPUs"
    result = parse_nccl_tests(read(TOO_MANY_GPUS))
    assert result["json_output"] == "/tmp/all_reduce.json"
    assert result["tests_version"] == "2.19.7" and result["nccl_version"] == "2.23.4"
    assert result["params"]["ngpus"] == 99 and result["params"]["unalign"] == 0
    assert result["failures"][:3] == [
        "Invalid number of GPUs: 297 requested but only 8 were found.",
        ".. nccl-badgpus pid 49: Test failure common.cu:1454",
        "Please check the number of processes and GPUs per process."]
    assert result["rows"] == [] and result["complete"] is False
    assert len(result["launcher_errors"]) == 2
    assert "mpirun detected that one or more processes exited" in result["launcher_errors"][1]


def test_nccl_tests_refusing_its_arguments_is_a_usage_error():
    result = parse_nccl_tests(read(BAD_ARGS))
    assert result["usage_errors"] == ["invalid size specified for 'minbytes'"] * 7
    assert result["excerpt"] is True and result["rows"] == []
    assert result["launcher_errors"][0].startswith("Primary job  terminated normally")


@pytest.mark.parametrize("name, text", [
    (NO_SLOTS, "There are not enough slots available in the system to satisfy the 16"),
    (PPR, "Your job has requested more processes than the ppr for this topology"),
])
def test_mpirun_refusing_the_job_is_a_launcher_error(name, text):
    with pytest.raises(LauncherError) as caught:
        parse_nccl_tests(read(name))
    assert caught.value.launcher == "mpirun" and caught.value.line == 2
    assert caught.value.text.startswith(text)


# --- excerpts ------------------------------------------------------------------------------------

def _table(name: str) -> list[str]:
    """The column header and rows of a capture, as a person copies them out of a log."""
    lines = read(name).splitlines()
    start = next(i for i, x in enumerate(lines) if "out-of-place" in x)
    end = next(i for i, x in enumerate(lines) if x.startswith("# Out of bounds"))
    return lines[start:end]


@pytest.mark.parametrize("name", [GCM, SUPERBENCH])
def test_excerpt_header_and_rows(name):
    whole = parse_nccl_tests(read(name))
    excerpt = parse_nccl_tests("\n".join(_table(name)))
    assert excerpt["excerpt"] is True and excerpt["columns"] == "header"
    assert excerpt["complete"] is False and excerpt["avg_busbw"] is None
    assert excerpt["rows"] == whole["rows"] and excerpt["layout"] == whole["layout"]


@pytest.mark.parametrize("name, layout", [(GCM, "wrong"), (SUPERBENCH, "error"),
                                          (EFA, "error")])
def test_excerpt_rows_alone_when_their_shape_is_unambiguous(name, layout):
    whole = parse_nccl_tests(read(name))
    rows = [x for x in read(name).splitlines()
            if strip_launcher_prefix(x)[0].strip()[:1].isdigit() and "NCCL" not in x]
    result = parse_nccl_tests("\n".join(rows))
    assert result["columns"] == "inferred" and result["excerpt"] is True
    assert result["layout"] == layout
    assert result["rows"] == whole["rows"]


def test_rows_alone_of_the_old_broadcast_and_all_gather_layouts():
    # nccl-tests before 2.13 printed `root` where all_reduce printed `redop`, and nothing
    # there for all_gather (rows written in those layouts)
    broadcast = "     1048576        262144   float       0    35.10   29.87   29.87  0e+00" \
                "    34.80   30.13   30.13  0e+00"
    gather = "     1048576         32768   float    60.22   17.41   15.24  0e+00    59.90" \
             "   17.51   15.32  0e+00"
    assert parse_nccl_tests(broadcast)["rows"][0]["root"] == 0
    assert parse_nccl_tests(gather)["rows"][0]["out_of_place"]["busbw"] == 15.24


def test_rows_alone_that_no_layout_explains_are_refused_naming_the_line():
    with pytest.raises(ParseError, match="line 2: a result row without its column header"):
        parse_nccl_tests("#\n1048576 262144 float sum -1 35.0 29.9 56.1 0\n")  # 9 values
    with pytest.raises(ParseError, match="line 1: a result row without"):
        parse_nccl_tests("1048576 262144 flute sum -1 35.0 29.9 29.9 0 35.0 29.9 29.9 0")


def test_a_capture_ending_inside_a_row_keeps_the_rows_before_it():
    lines = read(GCM).splitlines()
    at = next(i for i, x in enumerate(lines) if x.strip().startswith("536870912"))
    cut = lines[:at] + [lines[at][:40]]  # the run killed while printing this row
    result = parse_nccl_tests("\n".join(cut))
    assert len(result["rows"]) == 4 and result["cut_line"] == lines[at][:40].strip()
    assert result["complete"] is False


# --- the layouts and lines recent nccl-tests print (written from src/util.cu's format) -----

HEADER_2_19 = """\
# nccl-tests version 2.19.6 nccl-headers=22807 nccl-library=22807
# Collective test starting: all_reduce_perf
# nThread 1 nGpus 8 minBytes 8589934592 maxBytes 8589934592 step: 2(factor) warmup iters: 5 \
iters: 20 agg iters: 1 validation: 1 graph: 0 unalign: 0
#
# Using devices
#  Rank  0 Group  0 Pid  41203 on    gpu-001 device  0 [0000:18:00] NVIDIA H100 80GB HBM3
#
"""


def test_avg_bus_bandwidth_checked_against_nccl_tests_min_bw():
    table = (
        "#       size         count      type   redop    root     time   algbw   busbw  #wrong"
        "     time   algbw   busbw  #wrong \n"
        "  8589934592    2147483648     float     sum      -1    36880  232.91  407.60       0"
        "    36815  233.32  408.31       0\n"
        "# Out of bounds values : 0 OK\n"
        "# Avg bus bandwidth    : 407.955 FAILED\n#\n"
        "# Collective test concluded: all_reduce_perf\n#\n"
        "# error: NCCL WARN Cuda failure 'out of memory'\n")
    result = parse_nccl_tests(HEADER_2_19 + table)
    assert result["avg_busbw"] == 407.955 and result["avg_busbw_check"] == "FAILED"
    assert result["ranks"][0]["bus_id"] == "0000:18:00"
    assert result["last_error"] == "NCCL WARN Cuda failure 'out of memory'"
    assert result["nccl_version"] == "2.28.7"


def test_cputime_per_iteration_and_timestamp_columns():
    cputime = (
        "#       size         count      type   redop    root  cputime   algbw   busbw  #wrong"
        "  cputime   algbw   busbw  #wrong           timestamp\n"
        "  8589934592    2147483648     float     sum      -1    36880  232.91  407.60       0"
        "    36815  233.32  408.31       0  2026-07-09 10:11:12\n")
    row = parse_nccl_tests(HEADER_2_19 + cputime)["rows"][0]
    assert row["out_of_place"]["time_us"] == 36880 and row["timestamp"] == "2026-07-09 10:11:12"
    per_iter = (
        "#       size         count      type   redop    root     time   algbw   busbw  #wrong"
        "    i_min    i_max    i_p99    i_cv%     time   algbw   busbw  #wrong    i_min"
        "    i_max    i_p99    i_cv%\n"
        "  8589934592    2147483648     float     sum      -1    36880  232.91  407.60       0"
        "    36801    36990    36990     0.12    36815  233.32  408.31       0    36790"
        "    36850    36850     0.05\n")
    result = parse_nccl_tests(HEADER_2_19 + per_iter)
    assert result["rows"][0]["in_place"]["busbw"] == 408.31
    rows_alone = parse_nccl_tests(per_iter.splitlines()[1])
    assert rows_alone["columns"] == "inferred" and rows_alone["rows"] == result["rows"]


def test_nccl_tests_watchdog_and_crashes_are_recorded():
    lines = read(GCM).splitlines()
    at = next(i for i, x in enumerate(lines) if x.strip().startswith("134217728"))
    hang = lines[:at] + ["gpu-a01: Test timeout (60s) common.cu:523",
                         " .. gpu-a01 pid 66421: Test failure common.cu:1100"]
    assert parse_nccl_tests("\n".join(hang))["failures"][0] == (
        "gpu-a01: Test timeout (60s) common.cu:523")
    segv = [f"[1,0]<stdout>:{x}" for x in lines[:at]] + [
        "[gpu-a01:66421] *** Process received signal ***",
        "[gpu-a01:66421] Signal: Segmentation fault (11)",
        "[gpu-a01:66421] Signal code: Address not mapped (1)",
        "-" * 74,
        "mpirun noticed that process rank 0 with PID 66421 on node gpu-a01 exited on signal "
        "11 (Segmentation fault).",
        "-" * 74]
    result = parse_nccl_tests("\n".join(segv))  # a crash, not a LauncherError
    assert result["crashes"] == [
        "[gpu-a01:66421] *** Process received signal ***",
        "[gpu-a01:66421] Signal: Segmentation fault (11)",
        "mpirun noticed that process rank 0 with PID 66421 on node gpu-a01 exited on signal "
        "11 (Segmentation fault)."]
    assert result["launcher_messages"] == [
        "[gpu-a01:66421] Signal code: Address not mapped (1)"]
    assert crash_lines("0: srun: error: gpu-a01: task 3: Bus error") == [
        "srun: error: gpu-a01: task 3: Bus error"]


def test_ssh_refusing_mpiruns_daemon_is_a_launcher_error():
    text = ("ssh: connect to host gpu-002 port 22: Connection refused\n" + "-" * 74 + "\n"
            "ORTE was unable to reliably start one or more daemons.\n" + "-" * 74 + "\n")
    with pytest.raises(LauncherError) as caught:
        parse_nccl_tests(text)
    assert caught.value.launcher == "ssh" and caught.value.line == 1


# --- perftest: GPUDirect and errors before the banner ---------------------------------------

def test_ib_write_bw_says_when_the_buffer_was_gpu_memory():
    cuda = parse_ib_write_bw(
        (FIXTURES / "perftest" / "ib_write_bw.use-cuda-dmabuf.h200-roce.txt").read_text())
    assert (cuda["gpudirect"], cuda["dmabuf"], cuda["gpu_pcie"]) == (True, True, "8F:00")
    host = parse_ib_write_bw(
        (FIXTURES / "perftest" / "ib_write_bw.loopback-8M.hdr.superbench.txt").read_text())
    assert (host["gpudirect"], host["dmabuf"], host["gpu_pcie"]) == (False, False, None)


def test_perftest_errors_are_found_without_a_banner():
    text = " Port number 1 state is Down\n Couldn't set the link layer\n"
    with pytest.raises(ParseError):
        parse_ib_write_bw(text)
    assert perftest_errors("[1,0]<stderr>:" + text.replace("\n", "\n[1,0]<stderr>:")) == [
        "Port number 1 state is Down", "Couldn't set the link layer"]

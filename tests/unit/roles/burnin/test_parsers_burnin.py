"""nccl-tests and ib_write_bw parsers against real captures (tests/fixtures/nccl-tests,
tests/fixtures/perftest/*.superbench.txt and *.h200-roce.txt), the hand-written perftest
fixtures (*.ndr.*), and those captures as they come from a launcher: prefixed by mpirun or
srun, cut off mid-run, interleaved with warnings, or ending in the launcher's own error."""

from pathlib import Path

import pytest

from kiln.core.parsing import LauncherError, ParseError
from kiln.roles.burnin.parsers import busbw_at, parse_ib_write_bw, parse_nccl_tests

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures"
NEW = "all_reduce_perf.a100x8.single-node.gcm.txt"   # redop root ... #wrong
OLD = "all_reduce_perf.a100x8.superbench.txt"        # redop ... error
GiB8 = 8 * 2**30


def read(name: str) -> str:
    return (FIXTURES / "nccl-tests" / name).read_text()


def test_new_layout():
    result = parse_nccl_tests(read(NEW))
    assert result["layout"] == "wrong"
    assert result["nccl_version"] == "2.16.2+cuda11.6"
    assert result["params"]["ngpus"] == 1 and result["params"]["maxbytes"] == 1073741824
    assert len(result["ranks"]) == 8
    assert result["ranks"][5] == {"rank": 5, "group": 0, "pid": 66428, "host": "gpu-a01",
                                  "device": 5, "bus_id": "0x00",
                                  "device_name": "NVIDIA A100-SXM4-80GB"}
    assert [row["size"] for row in result["rows"]] == [2**k for k in range(25, 31)]
    last = result["rows"][-1]
    assert last["root"] == -1 and last["redop"] == "sum" and last["type"] == "float"
    assert last["out_of_place"] == {"time_us": 8109.1, "algbw": 132.41, "busbw": 231.72,
                                    "wrong": 0, "error": None}
    assert last["in_place"]["busbw"] == 231.70
    assert result["avg_busbw"] == 210.99
    assert (result["out_of_bounds"], result["out_of_bounds_ok"]) == (0, True)
    assert result["complete"] is True
    assert busbw_at(result, 2**30) == 231.72
    assert busbw_at(result, GiB8) is None


def test_old_layout_with_interleaved_nccl_info():
    result = parse_nccl_tests(read(OLD))
    assert result["layout"] == "error"
    assert result["ranks"][0]["group"] is None and result["ranks"][0]["host"] == "localhost"
    assert len(result["rows"]) == 34
    assert busbw_at(result, GiB8) == 235.26
    last = result["rows"][-1]
    assert last["root"] is None
    assert last["out_of_place"]["error"] is None  # "N/A": validation was off
    assert last["in_place"] == {"time_us": 63959.0, "algbw": 134.30, "busbw": 235.03,
                                "wrong": None, "error": None}
    assert result["avg_busbw"] == 68.4048


@pytest.mark.parametrize("name", [NEW, OLD])
def test_mpirun_prefixed(name):
    plain = parse_nccl_tests(read(name))
    prefixed = "".join(f"[1,0]<stdout>:{line}\n" for line in read(name).splitlines())
    prefixed += "[1,3]<stderr>:Warning: Permanently added 'gpu-a02' to the list of known hosts.\n"
    parsed = parse_nccl_tests(prefixed)
    assert parsed.pop("launcher_messages") == [
        "Warning: Permanently added 'gpu-a02' to the list of known hosts."]
    plain.pop("launcher_messages")
    assert parsed == plain


@pytest.mark.parametrize("name", [NEW, OLD])
def test_mpirun_tag_inside_a_row(name):
    """OpenMPI 4 tags forwarded chunks, so a tag can land in the middle of a result row."""
    plain = parse_nccl_tests(read(name))
    lines = read(name).splitlines()
    rows = [i for i, line in enumerate(lines) if line.strip()[:1].isdigit()]
    row = lines[rows[len(rows) // 2]].split()
    middle = len(row) // 2
    lines[rows[len(rows) // 2]] = (
        " ".join(row[:middle]) + " [1,0]<stdout>: " + " ".join(row[middle:])
    )
    tagged = "".join(f"[1,0]<stdout>:{line}\n" for line in lines)
    assert parse_nccl_tests(tagged) == plain


@pytest.mark.parametrize("name", [NEW, OLD])
def test_srun_label_prefixed(name):
    plain = parse_nccl_tests(read(name))
    prefixed = "".join(f"0: {line}\n" for line in read(name).splitlines())
    assert parse_nccl_tests(prefixed) == plain
    padded = "".join(f" 0: {line}\n" for line in read(name).splitlines())  # srun pads labels
    assert parse_nccl_tests(padded) == plain


def test_nccl_warn_and_failure_lines_are_kept():
    lines = read(NEW).splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip().startswith("134217728"))
    lines[at:] = [
        "gpu-a01:66421:66500 [0] NCCL WARN NET/IB : Got completion with error 12",
        "gpu-a01: Test NCCL failure common.cu:1005 'remote process exited or there was a "
        "network error'",
    ]
    result = parse_nccl_tests("\n".join(lines))
    assert result["complete"] is False
    assert len(result["rows"]) == 2
    assert result["warnings"][0].endswith("Got completion with error 12")
    assert "Test NCCL failure" in result["failures"][0]


def test_garbage_names_the_line():
    with pytest.raises(ParseError, match="line 1"):
        parse_nccl_tests("hello\nworld\n")
    lines = read(NEW).splitlines()
    lines.insert(17, "what is this")
    with pytest.raises(ParseError, match="line 18: not nccl-tests output: 'what is this'"):
        parse_nccl_tests("\n".join(lines))
    lines = read(OLD).splitlines()
    lines[20] = lines[20].rsplit(None, 1)[0]  # a data row missing its last column
    with pytest.raises(ParseError, match="line 21: 11 values for 12 columns"):
        parse_nccl_tests("\n".join(lines))


def test_ib_write_bw_report_gbits():
    result = parse_ib_write_bw(
        (FIXTURES / "perftest" / "ib_write_bw.ndr.report_gbits.txt").read_text())
    assert result["test"] == "RDMA_Write BW Test"
    assert (result["device"], result["link_type"], result["units"]) == ("mlx5_0", "IB", "Gb/sec")
    assert result["info"]["mtu"] == "4096[B]"
    assert result["rows"] == [{"bytes": 65536, "iterations": 5000, "bw_peak": 392.58,
                               "bw_average": 392.51, "msg_rate_mpps": 0.748666,
                               "bw_peak_gbps": 392.58, "bw_average_gbps": 392.51}]
    assert result["bw_average_gbps"] == 392.51


def test_ib_write_bw_megabytes_converted():
    result = parse_ib_write_bw((FIXTURES / "perftest" / "ib_write_bw.ndr.mbytes.txt").read_text())
    assert result["units"] == "MB/sec" and result["device"] == "mlx5_3"
    assert result["rows"][0]["bw_average"] == 46780.55
    # perftest's MB is 2**20 bytes: 46780.55 MiB/s * 8 * 2**20 / 1e9 = 392.42 Gb/s
    assert result["bw_average_gbps"] == pytest.approx(392.42, abs=0.01)


def test_ib_write_bw_errors_name_the_line():
    with pytest.raises(ParseError, match=r"line 1: no ib_write_bw result table.*Couldn't connect"):
        parse_ib_write_bw("Couldn't connect to 10.0.0.2:18515\nUnable to open file descriptor\n")
    text = (FIXTURES / "perftest" / "ib_write_bw.ndr.report_gbits.txt").read_text()
    broken = text.replace(" 65536      5000", " 65536      five", 1)
    with pytest.raises(ParseError, match="line 20: not an ib_write_bw result row"):
        parse_ib_write_bw(broken)


# --- real perftest captures, and captures as launchers deliver them -------------------------

LOOPBACK_8M = "ib_write_bw.loopback-8M.hdr.superbench.txt"        # client report, then server's
ALL_SIZES = "ib_write_bw.loopback-all-sizes.hdr.superbench.txt"   # both sides, interleaved
CUDA_ROCE = "ib_write_bw.use-cuda-dmabuf.h200-roce.txt"           # CUDA set-up chatter, -a


def perftest(name: str) -> str:
    return (FIXTURES / "perftest" / name).read_text()


def test_ib_write_bw_server_and_client_reports_in_one_capture():
    result = parse_ib_write_bw(perftest(LOOPBACK_8M))
    assert (result["device"], result["link_type"], result["units"]) == ("ib0", "IB", "MB/sec")
    assert result["info"]["number_of_qps"] == "1" and result["info"]["using_srq"] == "OFF"
    # Both sides print the same row: it is one measurement.
    assert [(r["bytes"], r["iterations"], r["bw_average"]) for r in result["rows"]] == [
        (8388608, 20000, 24056.72)]
    assert result["bw_average_gbps"] == pytest.approx(24056.72 * 2**20 * 8 / 1e9, abs=1e-3)
    assert result["complete"] is True and result["errors"] == []


def test_ib_write_bw_interleaved_sides_with_space_separated_banner():
    result = parse_ib_write_bw(perftest(ALL_SIZES))
    assert result["device"] == "ib0"  # "Dual-port : OFF          Device : ib0" (spaces)
    assert result["info"]["cq_moderation"] == "100" and result["info"]["ibv_wr_api"] == "ON"
    assert [r["bytes"] for r in result["rows"]] == [2**k for k in range(1, 24)]
    assert result["rows"][11] == {"bytes": 4096, "iterations": 2000, "bw_peak": 10034.02,
                                  "bw_average": 9948.41, "msg_rate_mpps": 2.546793,
                                  "bw_peak_gbps": 84.1715, "bw_average_gbps": 83.4533}
    assert result["complete"] is True


def test_ib_write_bw_cuda_set_up_lines_and_gids():
    result = parse_ib_write_bw(perftest(CUDA_ROCE))
    assert (result["device"], result["link_type"], result["units"]) == (
        "mlx5_3", "Ethernet", "Gb/sec")
    assert result["info"]["gid_index"] == "3" and result["info"]["lock_free"] == "OFF"
    assert result["info"]["local_gid"].endswith(":10:00:04:07")
    assert result["info"]["remote_gid"].endswith(":10:00:04:08")
    assert "cuda_device_0" not in result["info"]  # "CUDA device 0: PCIe address is 8F:00"
    assert len(result["rows"]) == 23 and result["rows"][0]["bw_peak"] == 0.05724
    assert result["bw_average_gbps"] == 140.40
    assert result["complete"] is True and result["errors"] == []


@pytest.mark.parametrize("name", [LOOPBACK_8M, ALL_SIZES, CUDA_ROCE,
                                  "ib_write_bw.ndr.report_gbits.txt"])
@pytest.mark.parametrize("prefix", ["[1,0]<stdout>:", "0: ", "  1: "])
def test_ib_write_bw_launcher_prefixes(name, prefix):
    plain = parse_ib_write_bw(perftest(name))
    prefixed = "".join(f"{prefix}{line}\n" for line in perftest(name).splitlines())
    assert parse_ib_write_bw(prefixed) == plain


def test_ib_write_bw_cut_off_mid_table_keeps_the_rows_so_far():
    lines = perftest(CUDA_ROCE).splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip().startswith("8192 "))
    cut = lines[:at] + [lines[at][:30]]  # the capture ends inside the 8192-byte row
    result = parse_ib_write_bw("\n".join(cut))
    assert [r["bytes"] for r in result["rows"]] == [2**k for k in range(1, 13)]
    assert result["complete"] is False and result["bw_average_gbps"] == 86.29
    # the same cut in the middle of a capture is a broken row, named
    broken = lines[:at] + [lines[at][:30]] + lines[at + 1:]
    with pytest.raises(ParseError, match=f"line {at + 1}: not an ib_write_bw result row"):
        parse_ib_write_bw("\n".join(broken))


def test_ib_write_bw_interleaved_warnings():
    lines = perftest(ALL_SIZES).splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("1024 "))
    lines[at:at] = [
        "Warning: Permanently added 'gpu-002' (ED25519) to the list of known hosts.",
        "[gpu-001:41203] 1 more process has sent help message help-mpi-btl-openib.txt",
        "mlx5: gpu-001: got completion with error:",  # another program's chatter
    ]
    result = parse_ib_write_bw("\n".join(lines))
    assert len(result["rows"]) == 23 and result["complete"] is True
    assert result["launcher_messages"] == [lines[at], lines[at + 1]]


def test_ib_write_bw_failed_run_reports_perftest_errors():
    lines = perftest("ib_write_bw.ndr.report_gbits.txt").splitlines()
    head = lines[:lines.index(next(x for x in lines if "remote address" in x)) + 2]
    text = "\n".join(head + [" Completion with error at client",
                             " Failed status 12: wr_id 0 syndrom 0x81",
                             "scnt=128, ccnt=0",
                             " Failed to complete run_iter_bw function successfully"])
    result = parse_ib_write_bw(text)
    assert result["rows"] == [] and result["complete"] is False
    assert result["bw_average_gbps"] is None and result["device"] == "mlx5_0"
    assert result["errors"] == ["Completion with error at client",
                                "Failed status 12: wr_id 0 syndrom 0x81",
                                "Failed to complete run_iter_bw function successfully"]


MPIRUN_CANNOT_LAUNCH = """\
--------------------------------------------------------------------------
mpirun was unable to launch the specified application as it could not access
or execute an executable:

Executable: /usr/bin/all_reduce_perf
Node: gpu-002

while attempting to start process rank 8.
--------------------------------------------------------------------------
"""
MPIRUN_RANK_KILLED = """\
--------------------------------------------------------------------------
Primary job  terminated normally, but 1 process returned
a non-zero exit code. Per user-direction, the job has been aborted.
--------------------------------------------------------------------------
--------------------------------------------------------------------------
mpirun noticed that process rank 3 with PID 0 on node gpu-002 exited on signal 9 (Killed).
--------------------------------------------------------------------------
"""


def test_launcher_error_before_any_output_is_a_launcher_error():
    for parse in (parse_nccl_tests, parse_ib_write_bw):
        with pytest.raises(LauncherError, match="line 2: mpirun failed: mpirun was unable to "
                                                "launch") as caught:
            parse(MPIRUN_CANNOT_LAUNCH)
        assert caught.value.launcher == "mpirun" and isinstance(caught.value, ParseError)
        assert "Node: gpu-002" in caught.value.text
    srun = ("srun: error: Unable to allocate resources: Invalid partition name specified\n")
    for parse in (parse_nccl_tests, parse_ib_write_bw):
        with pytest.raises(LauncherError, match="line 1: srun failed: srun: error: Unable") as c:
            parse(srun)
        assert c.value.launcher == "srun"


def test_launcher_error_that_cut_the_report_short_keeps_the_partial_result():
    lines = read(NEW).splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip().startswith("134217728"))
    text = "\n".join(f"[1,0]<stdout>:{line}" for line in lines[:at]) + "\n" + MPIRUN_RANK_KILLED
    with pytest.raises(LauncherError) as caught:
        parse_nccl_tests(text)
    assert caught.value.launcher == "mpirun"
    assert caught.value.line == at + 2  # "Primary job  terminated normally, but …"
    assert len(caught.value.partial["rows"]) == 2
    assert "exited on signal 9" in caught.value.partial["launcher_errors"][1]
    srun = "\n".join(f"0: {line}" for line in lines[:at]) + (
        "\nsrun: error: gpu-a01: task 0: Killed\nsrun: Job step aborted: Waiting up to 32 "
        "seconds for job step to finish.\n")
    with pytest.raises(LauncherError, match="srun failed: srun: error: gpu-a01: task 0: Killed"):
        parse_nccl_tests(srun)


def test_launcher_text_after_the_tools_own_failure_or_a_complete_report_is_kept():
    complete = read(NEW) + MPIRUN_RANK_KILLED  # wrong results: nccl-tests exits 1
    result = parse_nccl_tests(complete)
    assert result["complete"] is True and len(result["launcher_errors"]) == 2
    lines = read(NEW).splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip().startswith("134217728"))
    failed = lines[:at] + ["gpu-a01: Test NCCL failure common.cu:1005 'unhandled cuda error'",
                           "srun: error: gpu-a01: task 0: Exited with exit code 2"]
    result = parse_nccl_tests("\n".join(failed))
    assert result["complete"] is False and "Test NCCL failure" in result["failures"][0]
    assert result["launcher_errors"] == ["srun: error: gpu-a01: task 0: Exited with exit code 2"]


def test_openmpi_warning_box_is_a_launcher_message_not_garbage():
    box = ("--------------------------------------------------------------------------\n"
           "WARNING: There was an error initializing an OpenFabrics device.\n\n"
           "  Local host:   gpu-a01\n  Local device: mlx5_0\n"
           "--------------------------------------------------------------------------\n")
    result = parse_nccl_tests(box + read(OLD))
    assert result["launcher_messages"] == [
        "WARNING: There was an error initializing an OpenFabrics device. "
        "Local host:   gpu-a01 Local device: mlx5_0"]
    assert result["launcher_errors"] == [] and result["complete"] is True

"""nccl-tests and ib_write_bw parsers against real captures (tests/fixtures/nccl-tests) and
the hand-written perftest fixtures."""

from pathlib import Path

import pytest

from kiln.core.parsing import ParseError
from kiln.roles.burnin.parsers import busbw_at, parse_ib_write_bw, parse_nccl_tests

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
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
    assert parse_nccl_tests(prefixed) == plain


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

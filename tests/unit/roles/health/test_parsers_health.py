"""dcgmi diag and kernel-log parsers. The dcgmi *.h100x8.* fixtures are written from the
documented format (tests/fixtures/dcgmi/README.txt); the *.dcgm3* ones and the kernel logs are
real captures (tests/fixtures/README.txt)."""

from pathlib import Path

import pytest

from kiln.core.parsing import ParseError
from kiln.roles.health.parsers import parse_dcgmi_diag, parse_kernel_log

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures"


def dcgmi(name: str) -> dict:
    return parse_dcgmi_diag((FIXTURES / "dcgmi" / name).read_text())


def test_dcgmi_text_pass():
    result = dcgmi("diag-r3.h100x8.pass.txt")
    assert result["format"] == "text"
    assert (result["version"], result["driver_version"]) == ("3.3.5", "535.161.08")
    assert result["overall"] == "Pass"
    assert result["failed_tests"] == [] and result["failed_gpus"] == []
    categories = {t["category"] for t in result["tests"]}
    assert categories == {"Deployment", "Integration", "Hardware", "Stress"}
    eud = next(t for t in result["tests"] if t["name"] == "EUD Test")
    assert eud["status"] == "Skip" and eud["results"][0]["all_gpus"] is True
    denylist = result["tests"][0]
    assert denylist == {"category": "Deployment", "name": "Denylist", "status": "Pass",
                        "results": [{"status": "Pass", "gpus": [], "all_gpus": True}],
                        "warnings": [], "info": []}


def test_dcgmi_text_failure_names_gpu_and_joins_wrapped_warning():
    result = dcgmi("diag-r3.h100x8.gpu3-fail.txt")
    assert result["overall"] == "Fail"
    assert result["failed_tests"] == ["GPU Memory", "Targeted Stress"]
    assert result["failed_gpus"] == [3]
    memory = next(t for t in result["tests"] if t["name"] == "GPU Memory")
    assert memory["results"] == [
        {"status": "Pass", "gpus": [0, 1, 2, 4, 5, 6, 7], "all_gpus": False},
        {"status": "Fail", "gpus": [3], "all_gpus": False},
    ]
    assert memory["warnings"] == [
        "GPU 3 Error using CUDA API cudaMalloc Check DCGM and system logs for errors. Reset "
        "GPU. Restart DCGM. Rerun diagnostics. 'out of memory' for 1 bytes"
    ]
    stress = next(t for t in result["tests"] if t["name"] == "Targeted Stress")
    assert stress["warnings"][0].startswith("GPU 3 Detected 12 mismatches between computed "
                                            "results. Check DCGM")


def test_dcgmi_json_failure():
    result = dcgmi("diag-r3-j.h100x8.gpu3-fail.json")
    assert result["format"] == "json"
    assert (result["version"], result["driver_version"]) == ("3.3.5", "535.161.08")
    assert result["overall"] == "Fail"
    assert result["failed_tests"] == ["GPU Memory"]
    assert result["failed_gpus"] == [3]
    names = [t["name"] for t in result["tests"]]
    assert names[:3] == ["Denylist", "NVML Library", "Page Retirement/Row Remap"]  # nulls skipped
    assert result["tests"][0]["results"][0]["gpus"] == list(range(8))
    memory = next(t for t in result["tests"] if t["name"] == "GPU Memory")
    assert memory["warnings"][0].startswith("GPU 3 Error using CUDA API cudaMalloc")
    eud = next(t for t in result["tests"] if t["name"] == "EUD Test")
    assert eud["status"] == "Skip" and eud["info"] == [
        "EUD Test skipped: the EUD plugin is not installed"]


def test_dcgmi_json_after_a_warning_line_and_runtime_error():
    text = ('WARNING: something\n{"DCGM GPU Diagnostic": {"version": "3.3.5", '
            '"runtime_error": "Unable to connect to the host engine"}}')
    result = parse_dcgmi_diag(text)
    assert result["overall"] == "Error"
    assert result["runtime_error"] == "Unable to connect to the host engine"


def test_dcgmi_errors_name_the_line():
    with pytest.raises(ParseError, match="line 1"):
        parse_dcgmi_diag("garbage\n")
    with pytest.raises(ParseError, match="line 2: invalid JSON"):
        parse_dcgmi_diag('{\n  "DCGM GPU Diagnostic" : [ oops\n}')
    with pytest.raises(ParseError, match="line 1: dcgmi reported an error"):
        parse_dcgmi_diag("Error: unable to establish a connection to the specified host: "
                         "localhost\n")
    text = (FIXTURES / "dcgmi" / "diag-r3.h100x8.pass.txt").read_text()
    expected = "line 24: cannot read result 'Maybe' of 'Targeted Stress'"
    with pytest.raises(ParseError, match=expected):
        parse_dcgmi_diag(text.replace("Pass - All                                     |\n"
                                      "| Targeted Power",
                                      "Maybe                                          |\n"
                                      "| Targeted Power"))


def test_kernel_log_xid_119_real_capture():
    result = parse_kernel_log((FIXTURES / "dmesg" / "dmesg-with-xid-119.log").read_text())
    assert result["lines"] == 43
    assert [x["xid"] for x in result["xids"]] == [119] * 5
    first = result["xids"][0]
    assert first["pci"] == "0000:9b:00"
    assert (first["pid"], first["process"]) == (2024380, "nvidia-smi")
    assert first["timestamp"] == "Sun Feb 23 16:24:18 2025"
    assert first["message"].startswith("Timeout after 6s of waiting for RPC response from GPU4")
    assert first["line"] == 3
    assert result["xids"][-1]["process"] == "gpud"
    assert result["sxids"] == []


def test_kernel_log_kmsg_format():
    result = parse_kernel_log((FIXTURES / "dmesg" / "kmsg-peermem.log").read_text())
    assert result["lines"] == 8 and result["xids"] == []


def test_kernel_log_xid_79_sxid_and_formats():
    text = (
        "[ 1234.567890] NVRM: Xid (PCI:0000:18:00): 79, pid='<unknown>', name=<unknown>, "
        "GPU has fallen off the bus.\n"
        "2025-02-23T16:24:18,123456+00:00 nvidia-nvswitch2: SXid (PCI:0000:86:00.0): 12028, "
        "Non-fatal, Link 33 egress non-posted PRIV error (First)\n"
        "Feb 23 16:24:19 gpu-017 kernel: NVRM: Xid (PCI:0000:3b:00): 48, An uncorrectable "
        "double bit error (DBE) has been detected on GPU in the framebuffer at partition 6, "
        "subpartition 0.\n"
        "4,1201,5000123456,-;NVRM: Xid (PCI:0000:5d:00): 94, pid=4242, name=python, "
        "Ch 00000008, errorString CTX SWITCH TIMEOUT\n"
        " SUBSYSTEM=pci\n"
    )
    result = parse_kernel_log(text)
    assert [(x["xid"], x["pci"], x["pid"], x["process"]) for x in result["xids"]] == [
        (79, "0000:18:00", None, None), (48, "0000:3b:00", None, None),
        (94, "0000:5d:00", 4242, "python")]
    assert result["xids"][0]["message"] == "GPU has fallen off the bus."
    assert result["xids"][2]["timestamp"] == "5000.123456"
    [sxid] = result["sxids"]
    assert (sxid["sxid"], sxid["device"], sxid["pci"], sxid["severity"]) == (
        12028, "nvidia-nvswitch2", "0000:86:00.0", "Non-fatal")
    assert sxid["message"] == "Link 33 egress non-posted PRIV error (First)"


def test_kernel_log_garbage_names_the_line():
    with pytest.raises(ParseError, match="line 2: not a kernel log line"):
        parse_kernel_log("[    1.000000] Linux version 6.8\nhello there\n")
    with pytest.raises(ParseError, match="line 1"):
        parse_kernel_log("")


def dmesg(name: str) -> str:
    return (FIXTURES / "dmesg" / name).read_text()


def test_kernel_log_decoded_iso_xid_13_and_43_real_capture():
    """`dmesg --decode --time-format=iso`: "kern  :warn  : 2025-…+00:00 NVRM: Xid …"."""
    result = parse_kernel_log(dmesg("xid13-xid43.decode-iso.log"))
    xids = [x["xid"] for x in result["xids"]]
    assert xids.count(13) == 629 and xids.count(43) == 7
    first = result["xids"][0]
    assert (first["pci"], first["pid"], first["process"]) == ("0000:38:00", None, None)
    assert first["timestamp"] == "2025-01-21T02:21:33,498559+00:00"
    assert first["message"] == ("Graphics SM Warp Exception on (GPC 8, TPC 5, SM 0): "
                                "Out Of Range Address")


def test_kernel_log_decoded_healthy_hgx_boot_and_peermem_errors():
    boot = parse_kernel_log(dmesg("boot.hgx-h100.550.90.07.decode-iso.log"))
    assert boot["lines"] == 2362 and boot["xids"] == [] and boot["sxids"] == []
    peermem = parse_kernel_log(dmesg("peermem-error.decode-iso.log"))
    assert peermem["lines"] == 8 and peermem["xids"] == []


def test_kernel_log_other_real_captures():
    kmsg = parse_kernel_log(dmesg("kmsg-nvswitch-open.log"))
    assert kmsg["lines"] == 47 and kmsg["sxids"] == []
    lines = parse_kernel_log(dmesg("imbue-doctest-lines.log"))
    assert [(x["xid"], x["pid"], x["process"]) for x in lines["xids"]] == [
        (94, 2503421, "python3"), (64, None, None)]
    [sxid] = lines["sxids"]
    assert (sxid["sxid"], sxid["device"], sxid["severity"]) == (
        12028, "nvidia-nvswitch2", "Non-fatal")


def test_dcgmi_real_json_captures_dcgm3():
    """DCGM 3.x `-j` (tab-indented, " : " separators): Deployment results carry no gpu_ids,
    plugin results carry gpu_ids and an info string."""
    r1 = dcgmi("diag-r1.dcgm3.t4.pass.json")
    assert r1["format"] == "json" and r1["overall"] == "Pass"
    assert [t["category"] for t in r1["tests"]] == ["Deployment"] * 9
    assert r1["tests"][0]["results"] == [{"status": "Pass", "gpus": [], "all_gpus": True}]
    r3 = dcgmi("diag-r3.dcgm3.t4.pass.json")
    assert [(t["category"], t["name"]) for t in r3["tests"][9:]] == [
        ("Integration", "PCIe"), ("Hardware", "GPU Memory"), ("Hardware", "Diagnostic"),
        ("Hardware", "EUD Test"), ("Stress", "Targeted Stress"), ("Stress", "Targeted Power"),
        ("Stress", "Memory Bandwidth")]
    eud = r3["tests"][12]
    assert eud["status"] == "Skip" and eud["results"][0]["gpus"] == [0]
    assert r3["tests"][14]["info"] == ["GPU 0 GPU 0 power average:\t70 W"]
    assert r3["overall"] == "Pass" and r3["failed_gpus"] == []
    r2 = dcgmi("diag-r2.dcgm3.t4.pass.json")
    assert r2["tests"][10]["info"] == ["GPU 0 Allocated 15206918958 bytes (97.3%)"]


def test_dcgmi_real_text_capture_dcgm_3_3_3():
    """The real -r 2 table prints a Stress header with no rows under it."""
    result = dcgmi("diag-r2.dcgm3.3.3.a100x8.pass.txt")
    assert (result["version"], result["driver_version"]) == ("3.3.3", "535.104.12")
    assert result["metadata"]["gpu_device_ids_detected"] == ",".join(["20b2"] * 8)
    assert [t["name"] for t in result["tests"][9:]] == ["PCIe", "GPU Memory"]
    assert result["tests"][9]["results"] == [{"status": "Pass", "gpus": [], "all_gpus": True}]
    assert result["overall"] == "Pass"

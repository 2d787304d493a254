"""mlxfwmanager and mlxconfig parsers, against fixtures written from the documented formats
(tests/fixtures/mlxfwmanager, tests/fixtures/mlxconfig/q*.cx7*), and mlxconfig against a real
mstconfig capture (tests/fixtures/mlxconfig/mstconfig-q.*; no real mlxfwmanager capture is in
the project's shared fixture set)."""

from pathlib import Path

import pytest

from kiln.core.parsing import ParseError
from kiln.roles.firmware.parsers import parse_mlxconfig, parse_mlxfwmanager

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures"


def test_mlxfwmanager_query():
    devices = parse_mlxfwmanager(
        (FIXTURES / "mlxfwmanager" / "query.h100x8.update-required.txt").read_text())
    assert [d["index"] for d in devices] == [1, 2, 3]
    first = devices[0]
    assert first["device_type"] == "ConnectX7"
    assert first["psid"] == "MT_0000000838"
    assert first["pci_device_name"] == "/dev/mst/mt4129_pciconf0"
    assert first["base_guid"] == "a088c20300e3142a" and first["base_mac"] is None
    assert first["versions"]["fw"] == {"current": "28.39.1002", "available": "28.43.1014"}
    assert first["versions"]["uefi"]["current"] == "14.32.0012"
    assert (first["status"], first["update_required"]) == ("Update required", True)
    assert (devices[1]["status"], devices[1]["update_required"]) == ("Up to date", False)
    third = devices[2]
    assert third["pci_device_name"] == "0000:d2:00.0"
    assert third["versions"]["fw"] == {"current": "22.39.1002", "available": None}
    assert third["status"] == "No matching image found"
    assert third["description"].startswith("ConnectX-6 Dx EN adapter card; 100GbE;")


def test_mlxfwmanager_no_devices():
    text = ("Querying Mellanox devices firmware ...\n\n-E- No devices found or specified, mst "
            "might be stopped, run 'mst start' to load MST modules\n")
    assert parse_mlxfwmanager(text) == []


def test_mlxfwmanager_errors_name_the_line():
    with pytest.raises(ParseError, match="line 1"):
        parse_mlxfwmanager("some other tool\n")
    text = (FIXTURES / "mlxfwmanager" / "query.h100x8.update-required.txt").read_text()
    with pytest.raises(ParseError, match="line 13: expected 'NAME CURRENT AVAILABLE'"):
        parse_mlxfwmanager(text.replace("     FW             28.39.1002     28.43.1014",
                                        "     FW", 1))
    cut = text[: text.index("  Status:           Update required")]
    with pytest.raises(ParseError, match="Device #1: no 'Status:' line"):
        parse_mlxfwmanager(cut)


def test_mlxconfig_query():
    [device] = parse_mlxconfig((FIXTURES / "mlxconfig" / "q.cx7.ib.txt").read_text())
    assert device["device_type"] == "ConnectX7"
    assert device["name"] == "MCX75310AAS-NEA_Ax"
    assert device["device"] == "/dev/mst/mt4129_pciconf0"
    assert device["columns"] == ["next_boot"]
    assert device["config"]["LINK_TYPE_P1"] == {"value": "IB", "code": 1, "raw": "IB(1)",
                                                "modified": False}
    assert device["config"]["SRIOV_EN"]["value"] == "False"
    assert device["config"]["NUM_OF_VFS"] == {"value": "0", "code": None, "raw": "0",
                                              "modified": False}
    assert len(device["config"]) == 15
    assert device["config"]["EXP_ROM_UEFI_x86_ENABLE"]["code"] == 1  # real names have lower case


def test_mlxconfig_query_with_defaults_and_pending_change():
    [device] = parse_mlxconfig((FIXTURES / "mlxconfig" / "q-e.cx7.pending-eth.txt").read_text())
    assert device["columns"] == ["default", "current", "next_boot"]
    link = device["config"]["LINK_TYPE_P1"]
    assert (link["value"], link["current"], link["default"], link["modified"]) == (
        "ETH", "IB(1)", "IB(1)", True)


def test_mlxconfig_errors_name_the_line():
    with pytest.raises(ParseError, match="line 1"):
        parse_mlxconfig("garbage\n")
    text = (FIXTURES / "mlxconfig" / "q.cx7.ib.txt").read_text()
    with pytest.raises(ParseError, match="line 19: expected 'PARAM NEXT_BOOT'"):
        parse_mlxconfig(text.replace("IB(1)   ", "IB (1)  ", 1))
    with pytest.raises(ParseError, match="line 1: mlxconfig error"):
        parse_mlxconfig("-E- Failed to open device: /dev/mst/mt4129_pciconf9\n")


def test_mlxconfig_real_mstconfig_capture():
    """mstflint's `mstconfig -d 0000:06:00.0 q` on a ConnectX-6 (a real capture, trimmed to
    three parameters by whoever published it; no Description line in mstconfig's header)."""
    [device] = parse_mlxconfig(
        (FIXTURES / "mlxconfig" / "mstconfig-q.connectx6.trimmed.txt").read_text())
    assert (device["index"], device["device_type"], device["name"], device["device"]) == (
        1, "ConnectX6", "MCX654106A-HCA_Ax", "0000:06:00.0")
    assert device["description"] is None and device["columns"] == ["next_boot"]
    assert device["config"] == {
        "NUM_OF_VFS": {"value": "0", "code": None, "raw": "0", "modified": False},
        "SRIOV_EN": {"value": "False", "code": 0, "raw": "False(0)", "modified": False},
        "PF_TOTAL_SF": {"value": "0", "code": None, "raw": "0", "modified": False},
    }

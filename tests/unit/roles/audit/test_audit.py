"""The audit, read by read: one node against its manifest (real captures, then the lab's
simulated tools), the fleet's groups and inconsistencies, the report's lines, and the ledger's
record of when each drift was first seen."""

from __future__ import annotations

import json

import pytest
from hca_support import FIXTURES, SimNode, ip_json, report_text

from kiln.core.ledger import DriftSeen, Ledger, drift_since
from kiln.core.manifest import Manifest, load_manifest
from kiln.core.paths import FIRMWARE_DIR
from kiln.core.sections import MARK, split_sections
from kiln.roles.audit.fleet import fleet_audit
from kiln.roles.audit.observe import ABSENT, BmcRead, Fix, audit_node
from kiln.roles.audit.read import sections
from kiln.roles.audit.report import report_json, report_lines, seen_of
from kiln.roles.infiniband.parsers import parse_ibstat

LAB = load_manifest(FIRMWARE_DIR / "lab.yaml")
HGX = load_manifest(FIRMWARE_DIR / "hgx-h100-sxm.yaml")
BMC_OK = BmcRead(
    firmware=[{"id": "BIOS", "name": "BIOS", "version": "1.6.2", "updateable": True},
              {"id": "BMC", "name": "BMC", "version": "1.08.00", "updateable": True}],
    bios={"SriovGlobalEnable": "Disabled", "PcieAcsControl": "Disabled",
          "ProcTurboMode": "Enabled"})


def read_text(parts: dict[str, str], rcs: dict[str, int] | None = None) -> str:
    """What the audit's one command prints: each part framed as kiln.core.sections frames it."""
    out = []
    for name, text in parts.items():
        rc = (rcs or {}).get(name, 0)
        out += [f"{MARK} begin {name}", text.rstrip("\n"), "", f"{MARK} end {name} rc={rc}"]
    return "\n".join(out) + "\n"


def dpkg_rows(manifest: Manifest, held: bool = True, skip: tuple[str, ...] = (),
              versions: dict[str, str] | None = None) -> str:
    """`dpkg-query -W -f '${Package}\\t${Version}\\t${db:Status-Abbrev}\\n' NAMES`: a row per
    installed package ('hi ' held, 'ii ' not), stderr's line for each one not installed."""
    rows = []
    for name, version in sorted(manifest.pinned_packages().items()):
        if name in skip:
            rows.append(f"dpkg-query: no packages found matching {name}")
            continue
        rows.append(f"{name}\t{(versions or {}).get(name, version)}\t{'hi' if held else 'ii'} ")
    return "\n".join(rows)


def split(text: str, manifest: Manifest = LAB) -> dict:
    return split_sections(text, {s.name: s.timeout_s for s in sections(manifest)})


@pytest.fixture
def lab_node(tmp_path, monkeypatch):
    """A lab GPU node's simulated hardware with the manifest's mlxconfig settings applied."""
    node = SimNode(tmp_path, monkeypatch)
    for hca in node.profile()["hcas"]:
        node.run("mlxconfig", "-y", "-d", hca["name"], "set", "ADVANCED_PCI_SETTINGS=True")
    node.boot()
    return node


def lab_read(node: SimNode, **overrides: str) -> str:
    parts = {
        "kernel": "6.1.0-28-kilnlab",
        "packages": dpkg_rows(LAB),
        "nvidia_smi": node.run("nvidia_smi", "-q")[1],
        "hca": node.report(),
        "mlxfwmanager": node.run("mlxfwmanager", "--query")[1],
    }
    parts.update(overrides)
    return read_text(parts)


# -- one node ------------------------------------------------------------------------------------


def test_the_read_is_one_command_with_every_pinned_package_named():
    names = [part.name for part in sections(LAB)]
    assert names == ["kernel", "packages", "nvidia_smi", "hca", "mlxfwmanager"]
    packages = next(p for p in sections(LAB) if p.name == "packages").command
    for name in LAB.pinned_packages():
        assert name in packages


def test_a_lab_node_as_the_simulator_shows_it_is_clean(lab_node):
    audit = audit_node("gpu-001", LAB, split(lab_read(lab_node)), BMC_OK)
    assert audit.unread == []
    assert audit.drifts == []
    items = {value.item for value in audit.values}
    for item in ("kernel", "driver", "gpu count", "hca count", "firmware bios", "firmware bmc",
                 "firmware connectx7", "firmware gpu-vbios", "mlxconfig LINK_TYPE_P1",
                 "bios SriovGlobalEnable", "hold nccl-tests", "hca rate", "gpu PCIe width"):
        assert item in items, item
    # Values pinned nowhere are kept for the fleet's comparison.
    assert any(v.item == "bios ProcTurboMode" and v.expected is None for v in audit.values)


def test_each_kind_of_drift_is_named_with_what_fixes_it(lab_node):
    old = dict(LAB.pinned_packages())
    text = lab_read(
        lab_node, kernel="6.1.0-27-kilnlab",
        packages=dpkg_rows(LAB, skip=("datacenter-gpu-manager-4-cuda12",),
                           versions={"libnccl2": "2.21.5-1+cuda12.4"}).replace(
            f"nccl-tests\t{old['nccl-tests']}\thi ", f"nccl-tests\t{old['nccl-tests']}\tii "))
    bmc = BmcRead(firmware=[{"id": "BIOS", "name": "BIOS", "version": "1.5.0"},
                            {"id": "BMC", "name": "BMC", "version": "1.08.00"}],
                  bios={"SriovGlobalEnable": "Enabled", "PcieAcsControl": "Disabled"})
    audit = audit_node("gpu-001", LAB, split(text), bmc)
    found = {(v.item, v.where, v.expected, v.found, v.fix) for v in audit.drifts}
    assert found == {
        ("kernel", "", "6.1.0-28-kilnlab", "6.1.0-27-kilnlab", Fix.BRINGUP),
        ("package datacenter-gpu-manager-4-cuda12", "", old["datacenter-gpu-manager-4-cuda12"],
         ABSENT, Fix.BRINGUP),
        ("package libnccl2", "", old["libnccl2"], "2.21.5-1+cuda12.4", Fix.BRINGUP),
        ("hold nccl-tests", "", "held", "not held", Fix.BRINGUP),
        ("firmware bios", "FirmwareInventory/BIOS", "1.6.2", "1.5.0", Fix.FIRMWARE),
        ("bios SriovGlobalEnable", "", "Disabled", "Enabled", Fix.BIOS),
    }


def test_real_captures_against_the_hgx_manifest_name_the_old_driver_and_the_old_card():
    """nvidia-smi -q of a production HGX H100 (driver 535.161.08), mlxfwmanager --query of
    eight ConnectX-7 with one at 28.39.1002, ibstat and sysfs of an NDR node: all real."""
    smi = (FIXTURES / "nvidia-smi" / "q.h100x8.535.161.08.txt").read_text()
    mlx = (FIXTURES / "mlxfwmanager" / "query.h100x8.update-required.txt").read_text()
    ibstat = (FIXTURES / "ibstat" / "ibstat.h100.ib-ndr.all-active.txt").read_text()
    sysfs_dir = FIXTURES / "sysfs" / "class-infiniband-h100"
    names = [ca["name"] for ca in parse_ibstat(ibstat)]
    sysfs = {name: {"pci": f"0000:{0x18 + i:02x}:00.0",
                    "board_id": (sysfs_dir / "mlx5_4" / "board_id").read_text().strip(),
                    "current_link_width": "16", "netdev": f"ibp{0x18 + i}s0"}
             for i, name in enumerate(names)}
    hca = report_text(ibstat, sysfs, ip_json({f"ibp{0x18 + i}s0": (True, []) for i in range(8)}),
                      None)
    text = read_text({"kernel": "5.15.0-140-generic", "packages": dpkg_rows(HGX),
                      "nvidia_smi": smi, "hca": hca, "mlxfwmanager": mlx})
    audit = audit_node("gpu-017", HGX, split(text, HGX), BmcRead())
    drifts = {(v.item, v.where, v.found) for v in audit.drifts}
    assert ("driver", "", "535.161.08") in drifts
    assert ("firmware connectx7", "/dev/mst/mt4129_pciconf0", "28.39.1002") in drifts
    # The other seven cards run the pinned image; every GPU's VBIOS is the pinned one.
    assert not any(v.item == "firmware connectx7" and v.where.endswith(("1", "2"))
                   for v in audit.drifts)
    assert not any(v.item == "firmware gpu-vbios" for v in audit.drifts)
    # mlxconfig not installed while the manifest pins settings: said, not called clean.
    assert "mlxconfig: not installed (the manifest pins mlxconfig settings)" in audit.unread


def test_a_part_that_timed_out_leaves_only_its_own_values_unread(lab_node):
    text = lab_read(lab_node).replace(f"{MARK} end nvidia_smi rc=0", f"{MARK} end nvidia_smi "
                                                                      "rc=124")
    audit = audit_node("gpu-001", LAB, split(text), BMC_OK)
    assert audit.unread == ["nvidia-smi -q did not answer within 20 s (timed out)"]
    assert not any(v.item.startswith(("gpu ", "driver")) for v in audit.values)
    assert any(v.item == "hca count" for v in audit.values)
    assert audit.drifts == []


def test_a_bmc_that_refused_is_unread_and_one_without_bios_is_not_offered(lab_node):
    bmc = BmcRead(errors=("the BMC: 10.0.0.1: authentication failed (HTTP 401)",),
                  unsupported=("BIOS attributes: IPMI has no standard BIOS attribute read",))
    audit = audit_node("gpu-001", LAB, split(lab_read(lab_node)), bmc)
    assert audit.unread == ["the BMC: 10.0.0.1: authentication failed (HTTP 401)"]
    assert audit.unsupported == ["BIOS attributes: IPMI has no standard BIOS attribute read"]
    # Nothing the BMC would have said is called drift or clean.
    assert not any(v.item in ("firmware bios", "firmware bmc") or v.item.startswith("bios ")
                   for v in audit.values)


# -- the fleet -----------------------------------------------------------------------------------


def node_audits(lab_node, count: int, changes: dict[str, dict]) -> list:
    audits = []
    for i in range(1, count + 1):
        name = f"gpu-{i:03d}"
        change = changes.get(name, {})
        bmc = change.get("bmc", BMC_OK)
        audits.append(audit_node(name, LAB, split(lab_read(lab_node, **change.get("read", {}))),
                                 bmc))
    return audits


def test_one_drift_on_many_nodes_is_one_group_and_an_unpinned_split_is_inconsistent(lab_node):
    old_bios = BmcRead(firmware=[{"id": "BIOS", "name": "BIOS", "version": "1.5.0"},
                                 {"id": "BMC", "name": "BMC", "version": "1.08.00"}],
                       bios=BMC_OK.bios)
    turbo_off = BmcRead(firmware=BMC_OK.firmware, bios={**BMC_OK.bios, "ProcTurboMode":
                                                        "Disabled"})
    changes = {f"gpu-{i:03d}": {"bmc": old_bios} for i in (2, 3, 4)}
    changes["gpu-006"] = {"bmc": turbo_off}
    fleet = fleet_audit(node_audits(lab_node, 6, changes))
    assert not fleet.clean
    [drift] = fleet.drifts
    assert (drift.item, drift.expected, drift.found) == ("firmware bios", "1.6.2", "1.5.0")
    assert drift.nodes == ["gpu-002", "gpu-003", "gpu-004"]
    [odd] = fleet.inconsistencies
    assert odd.item == "bios ProcTurboMode"
    assert odd.split == (("Enabled", ("gpu-001", "gpu-002", "gpu-003", "gpu-004", "gpu-005")),
                         ("Disabled", ("gpu-006",)))
    assert odd.minority == ["gpu-006"]
    assert fleet.nodes_at_fault() == {
        "gpu-002": ["firmware bios"], "gpu-003": ["firmware bios"],
        "gpu-004": ["firmware bios"], "gpu-006": ["bios ProcTurboMode (inconsistent)"]}

    lines = report_lines(fleet, {}, "inventory/prod.py")
    assert lines[0].startswith("audit: 4 of 6 nodes differ: 1 drift(s), 1 inconsistency")
    assert lines[1] == ("DRIFT firmware bios: pinned 1.6.2, found 1.5.0 on 3 nodes: gpu-002, "
                        "gpu-003, gpu-004 (FirmwareInventory/BIOS), first seen now")
    assert lines[2] == ("      fix: pyinfra -y inventory/prod.py deploy/firmware.py "
                        "--limit gpu-002 --limit gpu-003 --limit gpu-004")
    assert lines[3] == ("INCONSISTENT bios ProcTurboMode (sku lab, pinned nowhere): 5 nodes "
                        "have Enabled, 1 node has Disabled (gpu-006), first seen now")
    assert len(lines) == 5


def test_a_clean_fleet_reports_one_line(lab_node):
    fleet = fleet_audit(node_audits(lab_node, 3, {}))
    assert fleet.clean
    lines = report_lines(fleet, {}, "inventory/lab.py")
    assert len(lines) == 1 and lines[0].startswith("audit: clean: 3 nodes, ")


def test_a_node_not_read_at_all_keeps_the_fleet_from_being_clean(lab_node):
    fleet = fleet_audit(node_audits(lab_node, 2, {}), {"gpu-003": "ssh: connection refused"})
    assert not fleet.clean
    assert fleet.nodes == ["gpu-001", "gpu-002", "gpu-003"]
    assert "NOT READ gpu-003: ssh: connection refused" in report_lines(fleet, {}, "inv.py")


# -- the ledger ----------------------------------------------------------------------------------


def test_the_ledger_keeps_when_each_drift_was_first_seen_and_forgets_a_fixed_one(tmp_path,
                                                                                  lab_node):
    ledger = tmp_path / "kiln.db"
    old_bios = BmcRead(firmware=[{"id": "BIOS", "name": "BIOS", "version": "1.5.0"},
                                 {"id": "BMC", "name": "BMC", "version": "1.08.00"}],
                       bios=BMC_OK.bios)
    fleet = fleet_audit(node_audits(lab_node, 3, {"gpu-002": {"bmc": old_bios}}))
    seen = seen_of(fleet)
    assert seen == [DriftSeen("gpu-002", "firmware bios", "FirmwareInventory/BIOS", "1.6.2",
                              "1.5.0")]
    book = Ledger(ledger)
    first = book.record_audit(fleet.nodes, seen, "1 of 3 differ", at=1000.0)
    second = book.record_audit(fleet.nodes, seen, "1 of 3 differ", at=2000.0)
    assert second == first + 1
    assert drift_since(ledger) == {seen[0]: 1000.0}
    lines = report_lines(fleet, drift_since(ledger), "inventory/lab.py")
    assert lines[1].endswith("since 1970-01-01 00:16 UTC")
    report = report_json(fleet, drift_since(ledger), 2000.0, second)
    assert report["drifts"][0]["since"] == {"gpu-002": "1970-01-01T00:16:40Z"}
    json.dumps(report)
    # A drift this audit saw first has no `since` yet.
    fresh = report_json(fleet, {}, 2000.0, None)
    assert fresh["drifts"][0]["since"] == {"gpu-002": None}
    # An audit of other nodes leaves gpu-002's drift alone; one of gpu-002 that finds it
    # fixed forgets it.
    book.record_audit(["gpu-001"], [], "clean", at=3000.0)
    assert drift_since(ledger) == {seen[0]: 1000.0}
    book.record_audit(["gpu-002"], [], "clean", at=4000.0)
    assert drift_since(ledger) == {}
    book.close()


def test_a_preview_reads_the_ledger_without_making_one(tmp_path):
    assert drift_since(tmp_path / "none.db") == {}
    assert not (tmp_path / "none.db").exists()

"""The boot-log check (kiln.roles.health.bootlog) and `kiln dmesg learn`.

Real captures (tests/fixtures/README.txt, tests/fixtures/syslog/README.txt): the healthy
HGX H100 boot log, the imbue-ai doctest lines (a PCIe link limited to x8 and to x1), the
gpud nvidia-peermem errors and Xid logs, the Azure IB link-flap syslog. The lab's simulated
boot is rendered from kiln/lab/hwsim as a lab node's `dmesg` prints it.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from kiln.cli import main
from kiln.core.checks import Action, CheckResult, Remediation, Status, Subject
from kiln.core.errors import ValidationFailed
from kiln.core.ledger import Ledger, last_recorded
from kiln.lab.hwsim.faults import apply_faults, fault_log_lines, validate_fault
from kiln.lab.hwsim.lab_hooks import _driver_log
from kiln.lab.hwsim.profile import generate_profile
from kiln.roles.health import bootlog
from kiln.roles.health.bootlog import (
    CHECK,
    judge_boot_log,
    load_allowlist,
    load_critical_rules,
    normalise,
)

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures"
REAL_BOOT = FIXTURES / "dmesg" / "boot.hgx-h100.550.90.07.decode-iso.log"
EDAC_UE = "EDAC MC0: 1 UE memory read error on CPU_SrcID#0_MC#0_Chan#0_DIMM#0"


def lines_of(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def shipped() -> bootlog.Allowlist:
    return load_allowlist()


@pytest.fixture(scope="module")
def rules() -> tuple[bootlog.CriticalRule, ...]:
    return load_critical_rules()


def by_status(results: list[CheckResult], status: Status) -> list[CheckResult]:
    return [r for r in results if r.status == status]


# --- normalise, token by token ----------------------------------------------------------

@pytest.mark.parametrize("raw, expected", [
    # prefixes: dmesg, dmesg -T, --time-format iso with --decode, /dev/kmsg, syslog
    ("[   18.617069] loop: module loaded", "loop: module loaded"),
    ("[Sun Feb 23 16:24:18 2025] loop: module loaded", "loop: module loaded"),
    ("kern  :info  : 2025-01-17T15:36:15,345155+00:00 loop: module loaded", "loop: module loaded"),
    ("6,3973,227996636,-;loop: module loaded", "loop: module loaded"),
    ("Aug 17 06:18:01 jplc7eb7-vm-0 kernel: [   18.6] loop: module loaded", "loop: module loaded"),
    ("Aug 17 06:18:01 jplc7eb7-vm-0 systemd-networkd[5398]: ib6: lost carrier",
     "systemd-networkd[<pid>]: ib<n>: lost carrier"),
    # white space runs become one space
    ("pci_bus 0000:80: root bus resource [io  0xa000-0xafff window]",
     "pci_bus <pcibus>: root bus resource [io <hex>-<hex> window]"),
    # PCI addresses: with and without the function, NVRM's "PCI:" form, lspci's short form
    ("mlx5_core 0000:1a:00.0: firmware version: 28.39.1002",
     "mlx5_core <pci>: firmware version: 28.39.1002"),
    ("NVRM: GPU at PCI:0000:9b:00: GPU-509665ad-b600-ac93-3616-d754b23d636d",
     "NVRM: GPU at PCI:<pci>: GPU-<uuid>"),
    ("ice 1a:00.0 up", "ice <pci> up"),
    # address ranges and long hex; short hex (ids, classes, codes) stays
    ("pci 0000:80:01.0: reg 0x10: [mem 0x2affffc00000-0x2affffc1ffff 64bit]",
     "pci <pci>: reg 0x10: [mem <hex>-<hex> 64bit]"),
    ("pci 0000:80:00.0: [8086:09a2] type 00 class 0x088000",
     "pci <pci>: [<pciid>] type 00 class 0x088000"),
    ("mpt3sas_cm0: log_info(0x3003011b): originator(IOP), code(0x03), sub_code(0x011b)",
     "mpt3sas_cm<n>: log_info(<hex>): originator(IOP), code(0x03), sub_code(0x011b)"),
    ("ACPI Error: No handler for Region [SYSI] (00000000780feec6) [IPMI]",
     "ACPI Error: No handler for Region [SYSI] (<hex>) [IPMI]"),
    # MACs (and a 20-octet IPoIB address), UUIDs, GUIDs
    ("tg3 0000:04:00.0 eth0: MAC address 94:6d:ae:c2:8a:10",
     "tg3 <pci> eth<n>: MAC address <mac>"),
    ("ib0: hw addr 00:00:10:29:fe:80:00:00:00:00:00:00:94:6d:ae:03:00:a1:b2:c3",
     "ib<n>: hw addr <mac>"),
    ("port GUID 946d:ae03:00a1:b2c3 up", "port GUID <guid> up"),
    ("mlx5_ib: node guid 0x946dae0300a1b2c3", "mlx5_ib: node guid <guid>"),
    # IPv4 and IPv6 addresses; a four-part version is not an address
    ("nfs: server 10.1.2.3 not responding", "nfs: server <ipv4> not responding"),
    ("IPv6: fe80::946d:aeff:fec2:8a10/64 added", "IPv6: <ipv6> added"),
    ("ICE OS Default Package version 1.3.36.0", "ICE OS Default Package version 1.3.36.0"),
    # PIDs
    ("NVRM: Xid (PCI:0000:0f:00): 94, pid=2503421, name=python3, Ch 00000008",
     "NVRM: Xid (PCI:<pci>): 94, pid=<pid>, name=python3, Ch 00000008"),
    ("mlx5_core 0000:1b:00.0: mlx5_pcie_event:299:(pid 9): Detected insufficient power",
     "mlx5_core <pci>: mlx5_pcie_event:299:(pid <pid>): Detected insufficient power"),
    # serial numbers, SCSI addresses, timestamps inside the message, a hostname
    ("NVRM: GPU Board Serial Number: 1650124014249", "NVRM: GPU Board Serial Number: <serial>"),
    ("scsi 13:0:0:0: Power-on or device reset occurred", "scsi <hctl>: Power-on or device reset "
                                                         "occurred"),
    ("rtc_cmos 00:00: setting system clock to 2025-01-17T15:36:14 UTC (1737128174)",
     "rtc_cmos 00:00: setting system clock to <time>"),
    ("systemd[1]: Hostname set to <g021.cluster.local>.",
     "systemd[<pid>]: Hostname set to <hostname>."),
    # instance and index numbers: the family stays
    ("mlx5_core 0000:9d:00.1 enp157s0f1np1: Link down",
     "mlx5_core <pci> enp<n>s<n>f<n>np<n>: Link down"),
    ("mlx5_core 0000:1a:00.0 ibp26s0: renamed from ib0",
     "mlx5_core <pci> ibp<n>s<n>: renamed from ib<n>"),
    ("pcieport 0000:00:01.0: PME: Signaling with IRQ 120",
     "pcieport <pci>: PME: Signaling with IRQ <n>"),
    ("IPv6: ADDRCONF(NETDEV_CHANGE): cali5be35fabd3e: link becomes ready",
     "IPv6: ADDRCONF(NETDEV_CHANGE): cali<id>: link becomes ready"),
    # sizes and short durations
    ("Freeing initrd memory: 189676K", "Freeing initrd memory: <size>"),
    ("acpi/hmat: Initiator-Target[0-4]:167 nsec", "acpi/hmat: Initiator-Target[<n>-<n>]:<n> nsec"),
])
def test_normalise_token_by_token(raw, expected):
    assert normalise(raw) == expected


@pytest.mark.parametrize("line", [
    # what a number means stays: PCIe widths and speeds, Gb/s, Xid codes, module numbers
    "mlx5_core <pci>: 252.056 Gb/s available PCIe bandwidth, limited by 32.0 GT/s PCIe x8 "
    "link at <pci> (capable of 504.112 Gb/s with 32.0 GT/s PCIe x16 link)",
    "mlx5_core <pci>: 504.112 Gb/s available PCIe bandwidth (32.0 GT/s PCIe x16 link)",
    "NVRM: Xid (PCI:<pci>): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus.",
    "mlx5_core <pci>: Port module event: module 1, Cable unplugged",
    "mlx5_core <pci>: Detected insufficient power on the PCIe slot (27W).",
    "EDAC MC<n>: 1 UE memory read error on CPU_SrcID#<n>_MC#<n>_Chan#<n>_DIMM#<n>",
    "tg3 <pci> eno<n>: Link is up at 1000 Mbps, full duplex",
])
def test_normalise_keeps_meaning_and_is_idempotent(line):
    assert normalise(line) == line


def test_x8_and_x16_stay_apart():
    narrow = ("mlx5_core 0000:9c:00.0: 252.056 Gb/s available PCIe bandwidth "
              "(32.0 GT/s PCIe x8 link)")
    assert normalise(narrow) != normalise(narrow.replace("x8", "x16"))
    assert normalise(EDAC_UE) != normalise(EDAC_UE.replace(" UE ", " CE "))


def test_normalise_is_idempotent_on_the_real_log_and_the_shipped_list(shipped):
    for raw in lines_of(REAL_BOOT):
        once = normalise(raw)
        assert normalise(once) == once
    assert all(normalise(entry) == entry for entry in shipped.lines)


# --- healthy boots are clean ----------------------------------------------------------

def test_real_h100_boot_log_is_clean(shipped, rules):
    results = judge_boot_log("g021", lines_of(REAL_BOOT), shipped, rules)
    assert [(r.check, r.status) for r in results] == [(CHECK, Status.OK)]
    assert results[0].subject == Subject("g021")
    assert results[0].evidence["lines"] > 2300


def lab_boot(role: str, driver: str | None = "570.148.08", firmware: str = "golden",
             faults: list[dict] | None = None) -> list[str]:
    """What a lab node's `dmesg` prints: the profile's boot log, the driver's lines, the
    faults' lines (kiln/lab/hwsim/view.py log_lines)."""
    profile = generate_profile("gpu-001" if role == "gpu" else "svc-001", 1, role=role,
                               firmware=firmware)
    faults = [validate_fault(f, "test", with_node=False) for f in faults or []]
    view = apply_faults(profile, faults)
    lines = [line for _, line in view["boot_log"]]
    if driver and profile["gpus"]:
        lines += [line for _, line in _driver_log(driver, profile)]
    lines += [line for _, line in fault_log_lines(profile, faults)]
    return [piece for line in lines for piece in line.split("\n")]


@pytest.mark.parametrize("role, driver, firmware", [
    ("gpu", "570.148.08", "golden"),
    ("gpu", "550.127.05", "old"),  # another driver, older firmware: still clean
    ("gpu", None, "golden"),  # before the driver is installed
    ("service", None, "golden"),
])
def test_lab_simulated_healthy_boot_is_clean(shipped, rules, role, driver, firmware):
    lines = lab_boot(role, driver, firmware)
    assert lines
    results = judge_boot_log("gpu-001", lines, shipped, rules)
    assert [r.status for r in results] == [Status.OK], [r.message for r in results]


def test_lab_faults_show(shipped, rules):
    narrow = judge_boot_log("gpu-001", lab_boot("gpu", faults=[
        {"kind": "pcie-width", "hca": 2, "width": 8}]), shipped, rules)
    critical = by_status(narrow, Status.CRITICAL)
    assert [r.evidence["rule"] for r in critical] == ["pcie-link-degraded"]
    assert critical[0].subject.part == "HCA" and critical[0].evidence["pci"] == "0000:4d:00.0"
    assert critical[0].remediation.action == Action.RESEAT
    slow = judge_boot_log("gpu-001", lab_boot("gpu", faults=[
        {"kind": "pcie-gen", "hca": 0, "gen": 3}]), shipped, rules)
    assert [(r.evidence["rule"], r.subject.name) for r in by_status(slow, Status.CRITICAL)] == \
        [("pcie-link-degraded", "0000:1a:00.0")]
    lost = judge_boot_log("gpu-001", lab_boot("gpu", faults=[{"kind": "gpu-lost", "gpu": 1}]),
                          shipped, rules)
    off_bus = [r for r in by_status(lost, Status.CRITICAL)
               if r.evidence["rule"] == "gpu-fallen-off-bus"]
    assert [(r.subject.part, r.subject.name) for r in off_bus] == [("GPU", "0000:3b:00.0")]
    assert off_bus[0].evidence["count"] == 2  # the Xid 79 line and the driver's own


# --- always critical --------------------------------------------------------------------

def test_every_rule_has_an_example_and_a_remediation(rules):
    names = {r.name for r in rules}
    assert names >= {"pcie-link-degraded", "edac-uncorrectable", "gpu-fallen-off-bus",
                     "ib-link-flap", "machine-check", "peermem-error"}
    for rule in rules:
        assert rule.examples and rule.why and rule.technician and isinstance(rule.action,
                                                                             Action)


CRITICAL_CASES = [
    ("pcie-link-degraded", FIXTURES / "dmesg" / "imbue-doctest-lines.log", "limited by"),
    ("peermem-error", FIXTURES / "dmesg" / "peermem-error.decode-iso.log", "ERROR"),
    ("ib-link-flap", FIXTURES / "syslog" / "ib-link-flap.syslog", "lost carrier"),
]


@pytest.mark.parametrize("rule_name, path, marker", CRITICAL_CASES)
def test_critical_rules_fire_on_real_lines_whatever_the_allowlist(tmp_path, shipped, rules,
                                                                  rule_name, path, marker):
    lines = [line for line in lines_of(path) if marker in line]
    site = tmp_path / "site.txt"
    site.write_text("".join(normalise(line) + "\n" for line in lines))  # the exact lines
    allowlist = load_allowlist(site=site)
    assert all(allowlist.accepts(normalise(line)) for line in lines)
    results = judge_boot_log("gpu-001", lines, allowlist, rules)
    assert {r.evidence["rule"] for r in by_status(results, Status.CRITICAL)} == {rule_name}
    assert by_status(results, Status.WARN) == []  # a critical line is not also unknown


@pytest.mark.parametrize("rule", load_critical_rules(), ids=lambda r: r.name)
def test_each_rule_fires_on_its_examples_even_when_listed(tmp_path, rule, rules):
    lines = list(rule.examples) * rule.min_count
    site = tmp_path / "site.txt"
    site.write_text("".join(normalise(line) + "\n" for line in lines))
    results = judge_boot_log("gpu-001", lines, load_allowlist(site=site), rules)
    assert rule.name in {r.evidence.get("rule") for r in by_status(results, Status.CRITICAL)}


def test_pcie_limited_names_the_card_and_says_what_to_do(shipped, rules):
    results = judge_boot_log("gpu-001", lines_of(FIXTURES / "dmesg" /
                                                 "imbue-doctest-lines.log"), shipped, rules)
    by_pci = {r.evidence["pci"]: r for r in by_status(results, Status.CRITICAL)}
    hca = by_pci["0000:9c:00.0"]
    assert hca.subject.key == "HCA 0000:9c:00.0" and ("pci", "0000:9c:00.0") in hca.subject.ids
    assert "PCIe x8 link" in hca.problems[0] and "0000:9c:00.0" in hca.remediation.detail
    assert by_pci["0000:02:00.0"].subject.part == "PCIe device"  # the x1 line
    # the Xid and SXid doctest lines are the Xid check's: skipped, not unknown
    assert by_status(results, Status.OK) and not by_status(results, Status.WARN)


def test_uncorrectable_edac_is_critical_and_names_the_dimm(shipped, rules):
    results = judge_boot_log("gpu-001", [f"[ 812.000001] {EDAC_UE}"], shipped, rules)
    (edac,) = by_status(results, Status.CRITICAL)
    assert edac.evidence["rule"] == "edac-uncorrectable"
    assert (edac.subject.part, edac.subject.name) == ("DIMM", "CPU_SrcID#0_MC#0_Chan#0_DIMM#0")
    assert edac.remediation.action == Action.RMA


def test_flapping_needs_repeats(shipped, rules):
    flap = [line for line in lines_of(FIXTURES / "syslog" / "ib-link-flap.syslog")
            if "lost carrier" in line]
    results = judge_boot_log("gpu-001", flap[:2], shipped, rules)
    assert by_status(results, Status.CRITICAL) == []
    (warn,) = by_status(results, Status.WARN)
    assert warn.evidence["unknown"][0]["pattern"] == "systemd-networkd[<pid>]: ib<n>: lost carrier"
    results = judge_boot_log("gpu-001", flap, shipped, rules)
    (critical,) = by_status(results, Status.CRITICAL)
    assert critical.subject.key == "IB port ib6" and critical.evidence["count"] == 6
    assert critical.remediation.action == Action.CHECK_CABLE


# --- no catch-alls ----------------------------------------------------------------------

@pytest.mark.parametrize("entry, says", [
    (r"re:^\d+.*$", "may vary a token, not a phrase"),
    (r"re:^\d+ \w+$", "literal characters"),
    (r"re:.*EDAC MC.*", "anchored at both ends"),
    (r"re:^.*EDAC MC.*$", "may vary a token, not a phrase"),
    (r"re:^EDAC MC<n>: \d+ \w+ memory read error on \S+$", "must never be accepted"),
    (r"re:^mlx5_core <pci>: [\d.]+ Gb/s available PCIe bandwidth, limited by [\d.]+ GT/s PCIe "
     r"x\d+ link at <pci> \(capable of [\d.]+ Gb/s with [\d.]+ GT/s PCIe x\d+ link\)$",
     "must never be accepted"),
    (r"re:^(unclosed$", "not a valid regular expression"),
    ("<pci>: <hex>", "placeholders and punctuation only"),
    ("[<n>]", "placeholders and punctuation only"),
])
def test_catch_all_entries_are_refused_naming_file_and_line(tmp_path, entry, says):
    site = tmp_path / "bootlog-allowlist.txt"
    site.write_text("# a site's list\nloop: module loaded\n" + entry + "\n")
    with pytest.raises(ValidationFailed) as refused:
        load_allowlist(site=site)
    (problem,) = refused.value.problems
    assert problem.startswith(f"{site}:3: ") and says in problem


def test_catch_all_lines_are_not_accepted(shipped, rules):
    """The lines the public catch-alls hid: no shipped entry accepts them, and they are
    critical or unknown."""
    for probe in bootlog.PROBES:
        assert not shipped.accepts(normalise(probe)), probe
    results = judge_boot_log("gpu-001", [EDAC_UE, "1234 anything", "EDAC MC0: 1 UE"], shipped,
                             rules)
    critical = by_status(results, Status.CRITICAL)
    assert {r.evidence["rule"] for r in critical} == {"edac-uncorrectable"}
    assert [r.subject.key for r in critical] == ["DIMM CPU_SrcID#0_MC#0_Chan#0_DIMM#0",
                                                 "boot log edac-uncorrectable"]
    (warn,) = by_status(results, Status.WARN)
    assert [u["pattern"] for u in warn.evidence["unknown"]] == ["1234 anything"]


def test_reviewed_regex_entries_load(tmp_path):
    site = tmp_path / "site.txt"
    site.write_text("re:^raid6: (?:avx512x[124]|avx2x[124]) (?:gen|xor)\\(\\) \\d+ MB/s$\n"
                    "mlx5_core 0000:1a:00.0: Port module event: module 0, Cable plugged\n")
    allowlist = load_allowlist(site=site)
    assert allowlist.accepts("raid6: avx2x4 xor() 5467 MB/s")
    assert allowlist.accepts("mlx5_core <pci>: Port module event: module 0, Cable plugged")
    assert str(site) in allowlist.sources


def test_missing_site_file_adds_nothing_and_shipped_must_exist(tmp_path):
    assert load_allowlist(site=tmp_path / "none.txt").lines == load_allowlist().lines
    with pytest.raises(ValidationFailed, match="no such file"):
        load_allowlist(shipped=tmp_path / "none.txt")


def test_critical_rules_are_checked_when_loaded(tmp_path):
    bad = tmp_path / "rules.yaml"
    bad.write_text("rules:\n  - name: x\n    title: t\n    patterns: ['never']\n    why: w\n"
                   "    action: reseat\n    technician: t\n    examples: ['something else']\n")
    with pytest.raises(ValidationFailed, match="do not match its example"):
        load_critical_rules(bad)


# --- unknown lines ----------------------------------------------------------------------

def test_unknown_lines_warn_with_the_evidence_learn_reads(shipped, rules):
    lines = ["[    5.1] pcieport 0000:00:01.0: AER: Corrected error received: 0000:01:00.0",
             "[    5.2] pcieport 0000:00:01.0: AER: Corrected error received: 0000:01:00.0",
             "[    5.3] BUG: unable to handle page fault for address: ffffc90000a1b000",
             "[    6.0] loop: module loaded"]
    results = judge_boot_log("gpu-002", lines, shipped, rules)
    (warn,) = results
    assert warn.status == Status.WARN and warn.check == CHECK and warn.subject.key == "node"
    assert set(warn.evidence) == {"unknown"}
    assert warn.evidence["unknown"] == [
        {"pattern": "pcieport <pci>: AER: Corrected error received: <pci>",
         "example": lines[0], "count": 2},
        {"pattern": "BUG: unable to handle page fault for address: <hex>",
         "example": lines[2], "count": 1},
    ]
    assert "3 kernel log lines" in warn.problems[0]
    assert "kiln dmesg learn gpu-002" in warn.remediation.detail


def test_xid_lines_are_skipped_unless_the_caller_says(shipped, rules):
    xid = lines_of(FIXTURES / "dmesg" / "xid13-xid43.decode-iso.log")
    assert [r.status for r in judge_boot_log("n", xid, shipped, rules)] == [Status.OK]
    judged = judge_boot_log("n", xid, shipped, rules, skip=lambda message: False)
    assert [r.status for r in judged] == [Status.WARN]


# --- kiln dmesg learn -------------------------------------------------------------------

UNKNOWN = [
    "[    5.1] pcieport 0000:00:01.0: AER: Corrected error received: 0000:01:00.0",
    "[    7.2] ice 0000:c1:00.0: PTP init successful",
    "[    7.3] ice 0000:c2:00.0: PTP init successful",
    "[    8.0] mlx5_core 0000:1a:00.0: Shampoo enabled on 3 queues",
]


@pytest.fixture
def recorded(tmp_path, shipped, rules) -> Path:
    ledger = tmp_path / "state" / "kiln.db"
    book = Ledger(ledger)
    book.record_results(judge_boot_log("gpu-003", UNKNOWN, shipped, rules))
    book.close()
    return ledger


def learn(ledger: Path, site: Path, *extra: str) -> int:
    return main(["dmesg", "learn", "gpu-003", "--ledger", str(ledger), "--allowlist", str(site),
                 *extra])


def test_last_recorded_reads_the_warn_back(recorded, tmp_path):
    row = last_recorded(recorded, "gpu-003", CHECK, subject="node")
    assert row is not None and row.status == Status.WARN
    assert [u["count"] for u in json.loads(row.evidence)["unknown"]] == [1, 2, 1]
    assert last_recorded(recorded, "gpu-004", CHECK) is None
    assert last_recorded(tmp_path / "none.db", "gpu-003", CHECK) is None


def test_learn_accept_all_adds_the_lines_once(recorded, tmp_path, shipped, rules, capsys,
                                             monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    site = tmp_path / "inventory" / "bootlog-allowlist.txt"
    assert learn(recorded, site, "--accept-all", "--yes") == 0
    out = capsys.readouterr().out
    assert "added 3 entries" in out and "ice <pci>: PTP init successful" in out
    text = site.read_text()
    assert text.startswith("# This site's boot-log allowlist")
    assert "# kiln dmesg learn gpu-003" in text
    assert re.search(r"^ice <pci>: PTP init successful$", text, re.M)
    assert "# seen 2x, e.g.: [ 7.2] ice 0000:c1:00.0: PTP init successful" in text

    assert learn(recorded, site, "--accept-all", "--yes") == 0
    assert "nothing to learn" in capsys.readouterr().out
    assert site.read_text() == text

    results = judge_boot_log("gpu-003", UNKNOWN, load_allowlist(site=site), rules)
    assert [r.status for r in results] == [Status.OK]


def test_learn_without_a_terminal_needs_accept_all(recorded, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    site = tmp_path / "bootlog-allowlist.txt"
    assert learn(recorded, site) == 1
    err = capsys.readouterr().err
    assert "no terminal" in err and "--accept-all" in err and "nothing written" in err
    assert not site.exists()


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_learn_asks_about_each_line_on_a_terminal(recorded, tmp_path, capsys, monkeypatch):
    site = tmp_path / "bootlog-allowlist.txt"
    site.write_text("# ours\nloop: module loaded\n")
    answers = iter(["n", "y", "", "y"])  # AER no, PTP yes, Shampoo (default) no, confirm
    monkeypatch.setattr("sys.stdin", Terminal())
    monkeypatch.setattr("builtins.input", lambda prompt="": next(answers))
    assert learn(recorded, site) == 0
    text = site.read_text()
    assert text.startswith("# ours\nloop: module loaded\n")
    assert "ice <pci>: PTP init successful" in text
    assert "AER" not in text and "Shampoo" not in text


def test_learn_writes_nothing_when_nothing_is_accepted(recorded, tmp_path, capsys, monkeypatch):
    site = tmp_path / "bootlog-allowlist.txt"
    monkeypatch.setattr("sys.stdin", Terminal())
    monkeypatch.setattr("builtins.input", lambda prompt="": "n")
    assert learn(recorded, site) == 0
    assert "nothing written" in capsys.readouterr().out and not site.exists()
    answers = iter(["y", "y", "y", "n"])  # every line, then no at the confirmation
    monkeypatch.setattr("builtins.input", lambda prompt="": next(answers))
    assert learn(recorded, site) == 0 and not site.exists()


def test_learn_refuses_a_catch_all_and_a_bad_site_file(tmp_path, capsys, monkeypatch):
    ledger = tmp_path / "kiln.db"
    book = Ledger(ledger)
    book.record_results([CheckResult(
        CHECK, Subject("gpu-003"), Status.WARN, ("unknown lines",),
        {"unknown": [{"pattern": "<pci>: <hex>", "example": "0000:01:00.0: 0x12345678",
                      "count": 4},
                     {"pattern": "ice <pci>: PTP init successful",
                      "example": "ice 0000:c1:00.0: PTP init successful", "count": 1}]},
        Remediation(Action.RECONFIGURE, "review"))])
    book.close()
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    site = tmp_path / "bootlog-allowlist.txt"
    assert learn(ledger, site, "--accept-all") == 1
    captured = capsys.readouterr()
    assert "placeholders and punctuation only" in captured.err
    assert "added 1 entry" in captured.out
    assert "<pci>: <hex>" not in site.read_text()

    site.write_text("re:.*\n")
    assert learn(ledger, site, "--accept-all") == 1
    assert f"{site}:1: " in capsys.readouterr().err


def test_learn_needs_a_recorded_result(tmp_path, capsys):
    assert learn(tmp_path / "kiln.db", tmp_path / "site.txt", "--accept-all") == 1
    assert "no boot-log result" in capsys.readouterr().err

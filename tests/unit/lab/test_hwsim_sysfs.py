"""The simulated /sys/class/infiniband tree, mlxfwreset and the module-load hook, against
the real interfaces: the sysfs capture (tests/fixtures/sysfs), the HcaReport fact's reads
and parsers, MFT's output."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
from pathlib import Path

import pytest
from test_hwsim_helpers import Node

from kiln.lab.hwsim.lab_hooks import apply_fault, clear_faults, on_node_boot
from kiln.lab.hwsim.profile import ipoib_netdev, read_json
from kiln.lab.hwsim.tools import kmod_install
from kiln.lab.vendor.catalogue import vendor_packages
from kiln.roles.firmware.parsers import parse_mlxconfig
from kiln.roles.infiniband.facts import HCA_REPORT
from kiln.roles.infiniband.parsers import (
    parse_hca_report,
    parse_mlxfwreset_query,
    parse_sysfs_infiniband,
    sysfs_listing,
)

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "sysfs" / "class-infiniband-h100"


@pytest.fixture
def node(tmp_path, monkeypatch):
    return Node(tmp_path, monkeypatch)


def _class(node: Node) -> Path:
    return node.hw / "sysfs" / "class" / "infiniband"


def _relative(root: Path) -> set[str]:
    """Every path under root (links followed once: a class entry is a link to its device)."""
    found = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        rel = Path(dirpath).relative_to(root)
        if "device" in rel.parts:
            dirnames[:] = []  # the link back to the PCI device: a cycle
            continue
        found |= {(rel / name).as_posix() for name in filenames}
    return found


def test_the_tree_has_the_real_captures_files(node):
    devices = sorted(p.name for p in _class(node).iterdir())
    assert devices == [f"mlx5_{i}" for i in range(8)]
    real = {p for p in _relative(FIXTURE / "mlx5_0")}
    ours = _relative(_class(node) / "mlx5_0")
    assert real <= ours, sorted(real - ours)
    # the same values, spelled as the kernel spells them
    for name in ("hca_type", "board_id", "ports/1/link_layer", "ports/1/state",
                 "ports/1/phys_state", "ports/1/rate"):
        assert (_class(node) / "mlx5_0" / name).read_text().strip() == \
            (FIXTURE / "mlx5_0" / name).read_text().strip(), name
    assert (_class(node) / "mlx5_0" / "fw_ver").read_text().count(".") == 2


def test_links_are_the_kernels_relative_links(node):
    entry = _class(node) / "mlx5_3"
    profile = read_json(node.hw / "profile.json")
    hca = profile["hcas"][3]
    target = os.readlink(entry)
    assert target.startswith("../../devices/pci0000:") and target.endswith("/infiniband/mlx5_3")
    assert os.readlink(entry / "device") == f"../../../{hca['pci_bdf']}"
    pci = (entry / "device").resolve()
    assert pci.name == hca["pci_bdf"]
    assert pci.is_relative_to(node.hw / "sysfs" / "devices")
    assert (pci / "current_link_width").read_text() == "16\n"
    assert (pci / "current_link_speed").read_text() == "32.0 GT/s PCIe\n"
    assert [n.name for n in (pci / "net").iterdir()] == [ipoib_netdev(hca)]
    assert (entry / "node_guid").read_text().strip().count(":") == 3


def test_sysfs_parser_reads_it_as_it_reads_the_capture(node):
    # each class entry is a link to its device (as in the kernel's tree), so list each one
    listing = "".join(
        "".join(f"{entry.name}/{line}\n" for line in sysfs_listing(entry.resolve()).splitlines())
        for entry in sorted(_class(node).iterdir()))
    ours = parse_sysfs_infiniband(listing)
    real = parse_sysfs_infiniband(sysfs_listing(FIXTURE))
    assert [d["name"] for d in ours] == [f"mlx5_{i}" for i in range(8)]
    assert set(real[0]) <= set(ours[0])
    port, real_port = ours[0]["ports"][0], real[0]["ports"][0]
    for key in ("state", "state_code", "phys_state", "phys_state_code", "rate_gb_s",
                "link_layer"):
        assert port[key] == real_port[key], key
    assert set(real_port["counters"]) == set(port["counters"])
    assert set(real_port["hw_counters"]) <= set(port["hw_counters"])


def test_faults_rewrite_the_tree_in_place(node):
    mlx = _class(node) / "mlx5_1"
    pci = (mlx / "device").resolve()
    inode = (node.hw / "sysfs" / "class" / "infiniband").stat().st_ino
    apply_fault(node.lab, node.name, "hca-port-down", {"hca": "1"})
    apply_fault(node.lab, node.name, "pcie-width", {"hca": "1", "width": "8"})
    apply_fault(node.lab, node.name, "hca-rate", {"hca": "2", "rate": "200"})
    assert (mlx / "ports/1/state").read_text() == "1: DOWN\n"
    assert (mlx / "ports/1/phys_state").read_text() == "2: Polling\n"
    assert (pci / "current_link_width").read_text() == "8\n"
    assert (_class(node) / "mlx5_2/ports/1/rate").read_text() == "200 Gb/sec (4X HDR)\n"
    # the directories the node's binds hold are the same ones
    assert (node.hw / "sysfs" / "class" / "infiniband").stat().st_ino == inode
    clear_faults(node.lab, node.name)
    assert (mlx / "ports/1/state").read_text() == "4: ACTIVE\n"
    assert (pci / "current_link_width").read_text() == "16\n"


def test_a_service_node_has_no_infiniband(tmp_path, monkeypatch):
    service = Node(tmp_path, monkeypatch, name="svc-001", role="service")
    assert not (service.hw / "sysfs").exists()


def _report(node: Node, root: Path, extra: str = "") -> dict:
    """Run the HcaReport fact's command with /sys/class/infiniband pointing into the tree
    and the simulated tools on PATH (as a lab node with OFED installed has them)."""
    bindir = root / "bin"
    bindir.mkdir(exist_ok=True)
    python = subprocess.run(["sh", "-c", "command -v python3"], capture_output=True,
                            text=True).stdout.strip()
    for tool in ("ibstat", "mlxconfig"):
        script = bindir / tool
        script.write_text(f"#!{python}\nimport sys\nfrom kiln.lab.hwsim.tools.{tool} import main\n"
                          "sys.exit(main())\n")
        script.chmod(0o755)
    command = HCA_REPORT.replace("/sys/class/infiniband", str(_class(node))) + extra
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "KILN_HW_DIR": str(node.hw),
           "KILN_HW_FLASH_DIR": str(node.hw / "flash"),
           "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, env=env)
    return parse_hca_report(out.stdout)


def test_the_fact_reads_every_hca_from_the_tree(node, tmp_path):
    report = _report(node, tmp_path)
    profile = read_json(node.hw / "profile.json")
    assert [h["device"] for h in report["hcas"]] == [f"mlx5_{i}" for i in range(8)]
    for hca, want in zip(report["hcas"], profile["hcas"], strict=True):
        assert hca["pci"] == want["pci_bdf"]
        assert hca["psid"] == want["psid"]
        assert hca["pcie_width"] == 16
        assert hca["pcie_speed"] == "32.0 GT/s PCIe"
        assert hca["netdev"] == ipoib_netdev(want)
        assert hca["state"] == "Active" and hca["rate"] == 400
        assert hca["mlxconfig"] and hca["mlxconfig_error"] is None


def test_a_card_trained_at_gen4_shows_in_its_current_link_speed(node, tmp_path):
    apply_fault(node.lab, node.name, "pcie-gen", {"hca": "3", "gen": "4"})
    pci = (_class(node) / "mlx5_3" / "device").resolve()
    assert (pci / "current_link_speed").read_text() == "16.0 GT/s PCIe\n"
    assert (pci / "max_link_speed").read_text() == "32.0 GT/s PCIe\n"  # what it is capable of
    speeds = {h["device"]: h["pcie_speed"] for h in _report(node, tmp_path)["hcas"]}
    assert speeds.pop("mlx5_3") == "16.0 GT/s PCIe"
    assert set(speeds.values()) == {"32.0 GT/s PCIe"}
    clear_faults(node.lab, node.name, "pcie-gen")
    assert (pci / "current_link_speed").read_text() == "32.0 GT/s PCIe\n"


def test_mlxfwreset_query_is_what_the_parser_reads(node):
    rc, out = node.run("mlxfwreset", "-d", "mlx5_0", "q")
    assert rc == 0
    assert out.startswith("Reset-levels:\n")
    assert "3: Driver restart and PCI reset" + " " * 34 + "-Supported     (default)" in out
    parsed = parse_mlxfwreset_query(out)
    assert parsed["supported"] is True
    assert parsed["levels"][3] == {"text": "Driver restart and PCI reset", "supported": True,
                                   "default": True}
    assert parsed["levels"][0]["supported"] is False
    rc, out = node.run("mlxfwreset", "-d", "mlx5_9", "q")
    assert rc == 1 and "-E-" in out


def _config(node: Node, device: str) -> dict:
    rc, out = node.run("mlxconfig", "-d", device, "-e", "q")
    assert rc == 0
    return parse_mlxconfig(out)[0]["config"]


def test_mlxfwreset_reset_makes_pending_values_current(node):
    rc, _ = node.run("mlxconfig", "-d", "mlx5_0", "-y", "set", "ADVANCED_PCI_SETTINGS=1")
    assert rc == 0
    node.run("mlxconfig", "-d", "mlx5_1", "-y", "set", "ADVANCED_PCI_SETTINGS=1")
    pending = _config(node, "mlx5_0")["ADVANCED_PCI_SETTINGS"]
    assert (pending["current"], pending["raw"]) == ("False(0)", "True(1)")
    rc, out = node.run("mlxfwreset", "-d", "mlx5_0", "reset")
    assert rc == 1 and "Aborted" in out
    rc, out = node.run("mlxfwreset", "-d", "mlx5_0", "-y", "reset")
    assert rc == 0, out
    assert "The reset level for device, mlx5_0 is:" in out
    assert out.rstrip().endswith("-I- FW was loaded successfully.")
    after = _config(node, "mlx5_0")["ADVANCED_PCI_SETTINGS"]
    assert after["current"] == after["raw"] == "True(1)"
    # mlx5_1 was not reset: still pending
    other = _config(node, "mlx5_1")["ADVANCED_PCI_SETTINGS"]
    assert other["current"] == "False(0)" != other["raw"]
    # a boot folds both into the profile
    on_node_boot(node.lab, node.name, node.rootfs)
    assert not (node.hw / "flash" / "mlxconfig-active.json").exists()
    for device in ("mlx5_0", "mlx5_1"):
        entry = _config(node, device)["ADVANCED_PCI_SETTINGS"]
        assert entry["current"] == entry["raw"] == "True(1)"


def _hook(node: Node, modules: Path, *argv: str) -> tuple[int, str]:
    node.monkeypatch.setenv("KILN_HW_DIR", str(node.hw))
    node.monkeypatch.setenv(kmod_install.MODULES_FILE_ENV, str(modules))
    node.monkeypatch.setenv(kmod_install.SYS_MODULES_ENV, str(modules.parent / "sys-module"))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = kmod_install.main(list(argv))
    return rc, err.getvalue()


def test_peermem_load_is_recorded_once(node, tmp_path):
    modules = tmp_path / "proc-modules"
    modules.write_text("ib_core 495616 1 mlx5_ib, Live 0x0000000000000000\n")
    assert _hook(node, modules, "nvidia_peermem") == (0, "")
    assert _hook(node, modules, "nvidia-peermem") == (0, "")
    lines = modules.read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["ib_core", "nvidia_peermem"]
    assert lines[1].split()[4] == "Live"
    # What modprobe asks to know a module is loaded: /sys/module/<name>/initstate.
    assert (tmp_path / "sys-module/nvidia_peermem/initstate").read_text() == "live\n"
    rc, err = _hook(node, modules, "nvidia_fs")
    assert rc == 1 and "not found" in err


def test_peermem_needs_the_nvidia_module(tmp_path, monkeypatch):
    bare = Node(tmp_path, monkeypatch)
    bare.driver_file.unlink()
    on_node_boot(bare.lab, bare.name, bare.rootfs)  # a boot with no driver installed
    rc, err = _hook(bare, tmp_path / "modules", "nvidia_peermem")
    assert rc == 1 and "could not insert 'nvidia_peermem'" in err
    assert not (tmp_path / "modules").exists()
    assert not (tmp_path / "sys-module").exists()


def test_packages_ship_mlxfwreset_and_the_modprobe_rule():
    packages = {p.name: p for p in vendor_packages()}
    assert ("/usr/bin/mlxfwreset", "mlxfwreset") in packages["mft"].tools
    common = [p for name, p in packages.items() if name.startswith("nvidia-kernel-common-")]
    assert common
    for package in common:
        rules = [text for path, text, _ in package.files if path.startswith("/etc/modprobe.d/")]
        assert any(line.startswith("install nvidia_peermem /usr/lib/kiln-hwsim/kmod-install ")
                   for text in rules for line in text.splitlines())
        assert ("/usr/lib/kiln-hwsim/kmod-install", "kmod_install") in package.tools


def test_a_simulated_module_has_its_sys_module_entry_only_while_loaded(node):
    # The node's /sys/module/nvidia_peermem links into its /run, which kmod-install fills on
    # load: absent before (the link dangles), present after, gone at power off (tmpfs).
    entry = _class(node).parent.parent / "module" / "nvidia_peermem"
    assert entry.is_symlink() and os.readlink(entry) == "/run/kiln/modules/nvidia_peermem"


def test_the_lab_base_image_has_modprobe():
    # The modprobe rule above needs kmod, which every server image has: so does the lab's.
    from kiln.lab.rootfs import PACKAGES

    assert "kmod" in PACKAGES

"""Building one vendor package with dpkg-deb (no root needed): control file and payload."""

from __future__ import annotations

import subprocess
from pathlib import Path

from kiln.lab.vendor import catalogue, debs


def package(name: str, version: str) -> catalogue.Package:
    return next(p for p in catalogue.vendor_packages() if p.name == name and p.version == version)


def test_control_text_carries_relations_and_a_folded_description():
    fm = package("nvidia-fabricmanager-570", "570.148.08-1kilnlab1")
    text = debs.control_text(fm, "amd64", 3)
    fields = dict(line.split(": ", 1) for line in text.splitlines() if not line.startswith(" "))
    assert fields["Architecture"] == "amd64"
    assert fields["Depends"].startswith(
        "nvidia-driver-570-server-open (= 570.148.08-1kilnlab1), kiln-hwsim-common"
    )
    assert fields["Conflicts"] == "nvidia-fabricmanager"
    hwsim = package(catalogue.HWSIM_PACKAGE, catalogue.HWSIM_VERSION)
    text = debs.control_text(hwsim, "amd64", 1)
    assert "Architecture: all" in text
    # every continuation line of a multi-line description is indented
    description = text.split("Description: ", 1)[1].splitlines()
    assert len(description) > 1 and all(line.startswith(" ") for line in description[1:])


def test_epoch_is_kept_in_the_version_but_not_in_the_file_name():
    dcgm = package("datacenter-gpu-manager-4-core", "1:4.2.3-1kilnlab1")
    expected = "datacenter-gpu-manager-4-core_4.2.3-1kilnlab1_amd64.deb"
    assert debs.deb_file_name(dcgm, "amd64") == expected
    assert dcgm.upstream_version == "4.2.3"


def test_digest_changes_with_inputs_only():
    one = package("nvidia-utils-570-server", "570.148.08-1kilnlab1")
    two = package("nvidia-utils-570-server", "570.124.06-1kilnlab1")
    assert debs.inputs_digest(one, "amd64") == debs.inputs_digest(one, "amd64")
    assert debs.inputs_digest(one, "amd64") != debs.inputs_digest(two, "amd64")
    assert debs.inputs_digest(one, "amd64") != debs.inputs_digest(one, "arm64")


def test_built_deb_installs_the_tool_script_and_driver_version(tmp_path: Path):
    utils = package("nvidia-utils-570-server", "570.148.08-1kilnlab1")
    deb = tmp_path / debs.deb_file_name(utils, "amd64")
    debs.build_deb(utils, "amd64", deb)
    field = subprocess.run(
        ["dpkg-deb", "-f", str(deb), "Package", "Version", "Depends"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert "Version: 570.148.08-1kilnlab1" in field
    assert "libnvidia-compute-570-server (= 570.148.08-1kilnlab1)" in field
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path / "x")], check=True)
    script = tmp_path / "x/usr/bin/nvidia-smi"
    assert script.read_text().startswith("#!/usr/bin/python3\n")
    assert "from kiln_hwsim.tools.nvidia_smi import main; sys.exit(main())" in script.read_text()
    assert script.stat().st_mode & 0o111

    driver = package("nvidia-driver-570-server-open", "570.148.08-1kilnlab1")
    deb = tmp_path / "driver.deb"
    debs.build_deb(driver, "amd64", deb)
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path / "d")], check=True)
    assert (tmp_path / "d/usr/share/kiln-hwsim/driver-version").read_text() == "570.148.08\n"


def test_same_inputs_build_byte_identical_debs(tmp_path: Path):
    mft = package("mft", "4.30.1-8kilnlab1")
    debs.build_deb(mft, "amd64", tmp_path / "a.deb")
    debs.build_deb(mft, "amd64", tmp_path / "b.deb")
    assert (tmp_path / "a.deb").read_bytes() == (tmp_path / "b.deb").read_bytes()


def test_hwsim_package_ships_the_simulator_tree_and_daemon(tmp_path: Path):
    hwsim = package(catalogue.HWSIM_PACKAGE, catalogue.HWSIM_VERSION)
    paths = {path for path, _, _ in debs.payload(hwsim)}
    assert debs.SIM_DAEMON_TARGET in paths
    sources = [
        p for p in debs.HWSIM_SOURCE.rglob("*.py") if "__pycache__" not in p.parts
    ] if debs.HWSIM_SOURCE.is_dir() else []
    for source in sources:
        relative = source.relative_to(debs.HWSIM_SOURCE).as_posix()
        assert f"{debs.HWSIM_TARGET}/{relative}" in paths
    assert not any("__pycache__" in path for path in paths)

"""Pins and the one-transaction plan, with the real manifests and the lab's real vendor
catalogue as the apt index (the index text is what `apt-cache show` prints for it)."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import pytest
import yaml

from kiln.core.manifest import Manifest, load_manifest
from kiln.lab.vendor.catalogue import vendor_packages
from kiln.roles.base import kernel_pin_set
from kiln.roles.base.aptpins import (
    PIN_PRIORITY,
    Change,
    Pin,
    PinError,
    PinSet,
    plan_change,
    render_preferences,
    set_name_of,
    upstream_version,
    with_companions,
)
from kiln.roles.base.parsers import parse_apt_cache_show, parse_preferences
from kiln.roles.infiniband.pinsets import ofed_pin_sets
from kiln.roles.nvidia.pinsets import nvidia_pin_sets

ROOT = Path(__file__).resolve().parents[4]
LAB = ROOT / "kiln/firmware/lab.yaml"
V550 = "550.144.03-1kilnlab1"


def catalogue_index() -> dict:
    """The vendor repository as apt sees it: every package's `apt-cache show` record."""
    records = []
    for package in vendor_packages():
        record = f"Package: {package.name}\nVersion: {package.version}\nArchitecture: amd64\n"
        if package.depends:
            record += "Depends: " + ", ".join(package.depends) + "\n"
        records.append(record)
    return parse_apt_cache_show("\n".join(records))


INDEX = catalogue_index()


class Lookups:
    """apt-cache on a node: answers for the names asked, counts how often it was asked."""

    def __init__(self, index: dict):
        self.index = index
        self.asked: list[set[str]] = []

    def __call__(self, names: set[str]) -> dict:
        self.asked.append(set(names))
        return {name: self.index[name] for name in names if name in self.index}


def lab_manifest(tmp_path: Path, change: dict | None = None) -> Manifest:
    document = yaml.safe_load(LAB.read_text())
    document["packages"].update(copy.deepcopy(change or {}))
    path = tmp_path / "lab.yaml"
    path.write_text(yaml.safe_dump(document))
    return load_manifest(path)


def resolved(manifest: Manifest) -> list[PinSet]:
    resolution = with_companions(nvidia_pin_sets(manifest, "lab.yaml"), Lookups(INDEX))
    assert resolution.missing == ()
    return list(resolution.sets)


def pins_of(sets: list[PinSet]) -> dict[str, str]:
    return {pin.name: pin.version for pin_set in sets for pin in pin_set.pins}


def branch_550() -> dict:
    return {
        "nvidia-driver": {"name": "nvidia-driver-550-server-open", "version": V550},
        "nvidia-fabricmanager": {"name": "nvidia-fabricmanager-550", "version": V550},
        "nvidia-persistenced": {"name": "nvidia-compute-utils-550-server", "version": V550},
    }


# --- companions ---------------------------------------------------------------------------------


def test_companions_are_the_same_version_dependencies_of_each_set():
    sets = {pin_set.name: pin_set for pin_set in resolved(load_manifest(LAB))}
    driver = {pin.name: pin for pin in sets["driver"].pins}
    assert set(driver) == {
        "nvidia-driver-570-server-open", "nvidia-fabricmanager-570",
        "nvidia-compute-utils-570-server", "libnvidia-compute-570-server",
        "nvidia-kernel-common-570-server", "nvidia-utils-570-server",
    }
    assert {pin.version for pin in driver.values()} == {"570.148.08-1kilnlab1"}
    assert driver["nvidia-utils-570-server"].source == (
        "same-version dependency of nvidia-driver-570-server-open")
    assert pins_of([sets["dcgm"]]) == {
        "datacenter-gpu-manager-4-cuda12": "1:4.2.3-1kilnlab1",
        "datacenter-gpu-manager-4-core": "1:4.2.3-1kilnlab1",
    }
    # tools >= toolkit version and the library >= tools version: same release, pinned too
    assert pins_of([sets["container-toolkit"]]) == {
        name: "1.17.8-1kilnlab1" for name in (
            "nvidia-container-toolkit", "nvidia-container-toolkit-base",
            "libnvidia-container-tools", "libnvidia-container1")}
    # nccl-tests needs libnccl2 (>= an older release) and the lab's simulator: not companions
    assert pins_of([sets["nccl"]]) == {
        "libnccl2": "2.26.5-1+cuda12.8kilnlab1", "libnccl-dev": "2.26.5-1+cuda12.8kilnlab1",
        "nccl-tests": "2.14.1-1+cuda12.8kilnlab1"}
    assert "kiln-hwsim-common" not in pins_of(list(sets.values()))


def test_each_name_is_looked_up_once_per_level():
    lookups = Lookups(INDEX)
    with_companions(nvidia_pin_sets(load_manifest(LAB), "lab.yaml"), lookups)
    asked = [name for level in lookups.asked for name in level]
    assert len(asked) == len(set(asked))
    assert len(lookups.asked) <= 4


def test_a_version_the_index_lacks_is_reported_missing(tmp_path):
    manifest = lab_manifest(tmp_path, {"dcgm": {"name": "datacenter-gpu-manager-4-cuda12",
                                                "version": "1:4.9.9-1"}})
    resolution = with_companions(nvidia_pin_sets(manifest, "lab.yaml"), Lookups(INDEX))
    assert [(pin.name, pin.version, pin.source) for pin in resolution.missing] == [
        ("datacenter-gpu-manager-4-cuda12", "1:4.9.9-1", "packages.dcgm")]


# --- preferences files --------------------------------------------------------------------------


def test_preferences_file_pins_every_package_of_the_set_at_1001():
    sets = resolved(load_manifest(LAB))
    driver = next(pin_set for pin_set in sets if pin_set.name == "driver")
    text = render_preferences(driver, "lab.yaml")
    assert driver.path == "/etc/apt/preferences.d/kiln-nvidia-driver.pref"
    assert "lab.yaml" in text.splitlines()[1]
    parsed = parse_preferences(text)
    assert [entry["package"] for entry in parsed] == [pin.name for pin in driver.pins]
    assert {entry["pin"] for entry in parsed} == {"version 570.148.08-1kilnlab1"}
    assert {entry["priority"] for entry in parsed} == {PIN_PRIORITY}


def test_kernel_set_from_the_manifest():
    kernel = kernel_pin_set(load_manifest(LAB))
    assert kernel.path == "/etc/apt/preferences.d/kiln-base-kernel.pref"
    assert pins_of([kernel]) == {f"linux-{part}-6.1.0-28-kilnlab": "6.1.119-1kilnlab1"
                                 for part in ("image", "headers", "modules")}
    assert not kernel.remove_replaced
    production = kernel_pin_set(load_manifest(ROOT / "kiln/firmware/hgx-h100-sxm.yaml"))
    assert pins_of([production])["linux-image-5.15.0-140-generic"] == "5.15.0-140.150"


def test_set_names_from_paths():
    assert set_name_of("nvidia", "/etc/apt/preferences.d/kiln-nvidia-driver.pref") == "driver"
    assert set_name_of("nvidia", "/etc/apt/preferences.d/kiln-base-kernel.pref") is None
    assert upstream_version("1:4.2.3-1kilnlab1") == "4.2.3"
    assert upstream_version("570.148.08-0ubuntu0.22.04.1") == "570.148.08"


# --- the plan -----------------------------------------------------------------------------------


def converged(sets: list[PinSet]) -> tuple[dict[str, str], set[str], dict[str, set[str]]]:
    """A node where these sets were applied: installed, held, preferences files written."""
    installed = {"bash": "5.2.15-2+b7", **pins_of(sets)}
    held = set(pins_of(sets))
    pinned = {pin_set.name: {pin.name for pin in pin_set.pins} for pin_set in sets}
    return installed, held, pinned


def test_fresh_node_installs_and_holds_everything():
    sets = resolved(load_manifest(LAB))
    change = plan_change(sets, {"bash": "5.2.15-2+b7"}, [], {})
    assert dict(change.install) == pins_of(sets)
    assert change.remove == () and change.unhold == ()
    assert set(change.hold) == set(pins_of(sets))


def test_converged_node_changes_nothing():
    sets = resolved(load_manifest(LAB))
    change = plan_change(sets, *converged(sets))
    assert change.empty and change.commands() == []


def test_one_version_changed_installs_only_that_release(tmp_path):
    before = resolved(load_manifest(LAB))
    after = resolved(lab_manifest(tmp_path, {"dcgm": {
        "name": "datacenter-gpu-manager-4-cuda12", "version": "1:4.1.1-1kilnlab1"}}))
    change = plan_change(after, *converged(before))
    assert dict(change.install) == {"datacenter-gpu-manager-4-cuda12": "1:4.1.1-1kilnlab1",
                                    "datacenter-gpu-manager-4-core": "1:4.1.1-1kilnlab1"}
    assert change.remove == ()
    # the whole scope is unheld around the transaction and held again
    assert set(change.unhold) == set(change.hold) == set(pins_of(after))


def test_driver_branch_change_is_one_transaction_removing_the_old_branch(tmp_path):
    before = resolved(load_manifest(LAB))
    after = resolved(lab_manifest(tmp_path, branch_550()))
    change = plan_change(after, *converged(before))
    assert dict(change.install) == {name: V550 for name in (
        "nvidia-driver-550-server-open", "nvidia-fabricmanager-550",
        "nvidia-compute-utils-550-server", "libnvidia-compute-550-server",
        "nvidia-kernel-common-550-server", "nvidia-utils-550-server")}
    assert set(change.remove) == {name for name in pins_of(before) if "-570" in name}
    assert "nvidia-driver-570-server-open" in change.unhold
    assert not [name for name in change.hold if "-570" in name]
    (command,) = change.commands()
    assert "nvidia-driver-550-server-open=550.144.03-1kilnlab1" in command
    assert "nvidia-driver-570-server-open-" in command
    assert command.index("apt-mark unhold") < command.index("apt-get") < command.index(
        "apt-mark hold")


def test_a_driver_of_another_branch_kiln_did_not_install_is_removed():
    sets = resolved(load_manifest(LAB))
    installed = {"nvidia-driver-535-server-open": "535.161.08-0ubuntu1",
                 "libnvidia-compute-535-server": "535.161.08-0ubuntu1",
                 "libnvidia-container1": "1.17.8-1kilnlab1"}
    change = plan_change(sets, installed, ["nvidia-driver-535-server-open"], {})
    assert set(change.remove) == {"nvidia-driver-535-server-open",
                                  "libnvidia-compute-535-server"}
    assert "nvidia-driver-535-server-open" in change.unhold


def test_a_replaced_kernel_stays_installed_and_is_only_unheld(tmp_path):
    old = kernel_pin_set(load_manifest(LAB))
    document = yaml.safe_load(LAB.read_text())
    document["os"]["kernel"].update(abi="6.1.0-27", version="6.1.115-1kilnlab1")
    (tmp_path / "lab.yaml").write_text(yaml.safe_dump(document))
    new = kernel_pin_set(load_manifest(tmp_path / "lab.yaml"))
    change = plan_change([new], *converged([old]))
    assert change.remove == ()
    assert set(change.release) == set(pins_of([old]))
    assert set(pins_of([old])) <= set(change.unhold)
    assert dict(change.install) == pins_of([new])


def test_a_pin_not_to_hold_is_unheld():
    pin_set = PinSet("t", "s", (Pin("libnccl2", "2.26.5-1", "packages.libnccl2", hold=False),))
    change = plan_change([pin_set], {"libnccl2": "2.26.5-1"}, ["libnccl2"], {"s": {"libnccl2"}})
    assert change.install == () and change.unhold == ("libnccl2",) and change.hold == ()


def test_one_package_pinned_twice_at_different_versions_is_refused():
    first = PinSet("t", "a", (Pin("libnccl2", "1", "packages.libnccl2"),))
    second = PinSet("t", "b", (Pin("libnccl2", "2", "same-version dependency of x"),))
    with pytest.raises(PinError, match="libnccl2 is pinned twice.*packages.libnccl2"):
        plan_change([first, second], {}, [], {})


# --- the transaction's shell ----------------------------------------------------------------------


def run_transaction(tmp_path: Path, change: Change, apt_get_status: int) -> tuple[int, list[str]]:
    """Run the plan's command with apt-get and apt-mark stand-ins that log their arguments
    (the shell logic is what is tested: holds restored on failure, the status kept)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls"
    for tool, status in (("apt-get", apt_get_status), ("apt-mark", 0)):
        script = bin_dir / tool
        script.write_text(f'#!/bin/sh\necho "{tool} $*" >> {log}\nexit {status}\n')
        script.chmod(0o755)
    (command,) = change.commands()
    result = subprocess.run(["sh", "-c", command], env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
                            capture_output=True, text=True)
    return result.returncode, log.read_text().splitlines()


def test_failed_transaction_holds_again_what_was_held(tmp_path):
    change = Change(install=(("a", "2"),), remove=("old",), unhold=("a", "old"),
                    hold=("a",))
    status, calls = run_transaction(tmp_path, change, apt_get_status=100)
    assert status == 100
    assert calls[0] == "apt-mark unhold a old"
    assert calls[1].startswith("apt-get -y -q") and calls[1].endswith("a=2 old-")
    assert "--allow-downgrades" in calls[1]
    assert calls[2:] == ["apt-mark hold a old"]


def test_successful_transaction_holds_the_new_set(tmp_path):
    change = Change(install=(("a", "2"),), remove=("old",), unhold=("a", "old"),
                    hold=("a",))
    status, calls = run_transaction(tmp_path, change, apt_get_status=0)
    assert status == 0
    assert calls[-1] == "apt-mark hold a"
    assert len(calls) == 3


def test_an_ofed_release_pins_its_exact_dependencies_at_their_own_versions():
    # doca-ofed names its userspace, mft and perftest at one exact version each (not its
    # own): they are that release's, pinned and held with it.
    [ofed] = with_companions(ofed_pin_sets(load_manifest(LAB), "lab.yaml"), Lookups(INDEX)).sets
    pins = {pin.name: pin for pin in ofed.pins}
    doca = next(p for p in vendor_packages()
                if p.name == "doca-ofed" and p.version == "2.9.1-1kilnlab1")
    exact = {relation.split(" (= ")[0]: relation.split(" (= ")[1].rstrip(")")
             for relation in doca.depends if " (= " in relation and "|" not in relation}
    assert {"mft", "infiniband-diags", "perftest"} <= set(exact)
    for name, version in exact.items():
        assert pins[name].version == version and pins[name].hold
        assert pins[name].source == "exact dependency of doca-ofed"
    assert pins["mft"].version != pins["doca-ofed"].version


def test_exact_dependencies_are_parsed_with_their_versions():
    index = parse_apt_cache_show(
        "Package: x\nVersion: 1\nDepends: a (= 2.0-1), b (>= 1), c:amd64 (= 3), d (= 4) | e\n")
    assert index["x"]["1"]["exact"] == {"a": "2.0-1", "c": "3"}

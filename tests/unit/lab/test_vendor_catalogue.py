"""The lab vendor repository's catalogue is consistent with the lab manifest and with itself."""

from __future__ import annotations

import re
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from kiln.lab import firmware_blobs
from kiln.lab.vendor import catalogue
from kiln.lab.vendor.catalogue import Package

ROOT = Path(__file__).resolve().parents[3]
MANIFEST = yaml.safe_load((ROOT / "kiln" / "firmware" / "lab.yaml").read_text())
PACKAGES = catalogue.vendor_packages()
VERSIONS: dict[str, list[str]] = defaultdict(list)
for _package in PACKAGES:
    VERSIONS[_package.name].append(_package.version)
PROVIDED = {virtual for package in PACKAGES for virtual in package.provides}
# Debian packages the vendor packages may depend on: the node base image has them, and the
# OS mirror carries them for nodes that lack them.
DEBIAN_DEPENDENCIES = {"python3", "adduser", "openmpi-bin"}
RELATION = re.compile(
    r"^(?P<name>[a-z0-9][a-z0-9+.-]+)(?: \((?P<op><<|<=|=|>=|>>) (?P<ver>\S+)\))?$"
)


def dpkg_compare(left: str, op: str, right: str) -> bool:
    ops = {"<<": "lt", "<=": "le", "=": "eq", ">=": "ge", ">>": "gt"}
    return (
        subprocess.run(["dpkg", "--compare-versions", left, ops.get(op, op), right]).returncode
        == 0
    )


def by_name_version(name: str, version: str) -> Package:
    matches = [p for p in PACKAGES if p.name == name and p.version == version]
    assert len(matches) == 1, f"{name} {version}: {len(matches)} catalogue entries"
    return matches[0]


def test_every_manifest_package_is_in_the_catalogue_at_the_pinned_version():
    for key, pin in MANIFEST["packages"].items():
        assert pin["version"] in VERSIONS[pin["name"]], (
            f"firmware/lab.yaml packages.{key}: {pin['name']} {pin['version']} not in catalogue"
        )


def test_manifest_kernel_is_in_the_catalogue():
    kernel = MANIFEST["os"]["kernel"]
    release = f"{kernel['abi']}-{kernel['flavour']}"
    for kind in ("image", "headers", "modules"):
        assert kernel["version"] in VERSIONS[f"linux-{kind}-{release}"], kind
    # and one other kernel to move to
    other = {n for n in VERSIONS if n.startswith("linux-image-") and n != f"linux-image-{release}"}
    assert other


def test_manifest_pins_are_the_newest_release_of_each_package():
    # apt takes dependencies at their candidate (newest) version: with the manifest's pins
    # the newest, a plain `apt-get install name=version` resolves without extra pins.
    for key, pin in MANIFEST["packages"].items():
        for version in VERSIONS[pin["name"]]:
            assert dpkg_compare(pin["version"], ">=", version), f"packages.{key}: {version}"


def test_every_manifest_package_has_several_versions():
    for key, pin in MANIFEST["packages"].items():
        assert len(VERSIONS[pin["name"]]) >= 2, f"packages.{key}: only {VERSIONS[pin['name']]}"


def test_two_driver_branches_with_two_versions_each():
    branches = {
        m.group(1): VERSIONS[name]
        for name in VERSIONS
        if (m := re.fullmatch(r"nvidia-driver-(\d+)-server-open", name))
    }
    assert {"550", "570"} <= set(branches)
    for branch, versions in branches.items():
        assert len(versions) >= 2, branch
        assert all(v.startswith(f"{branch}.") for v in versions)
    for product in ("nvidia-fabricmanager-{}", "nvidia-compute-utils-{}-server"):
        for branch in ("550", "570"):
            assert len(VERSIONS[product.format(branch)]) >= 2, product.format(branch)


def test_two_cuda_series_two_releases_each():
    for series in ("12-4", "12-8"):
        assert len(VERSIONS[f"cuda-toolkit-{series}"]) >= 2


def test_versions_are_unique_and_marked_as_lab_builds():
    seen = set()
    for package in PACKAGES:
        assert (package.name, package.version) not in seen, package
        seen.add((package.name, package.version))
        assert package.version.endswith("kilnlab1"), package
        assert "simulated" in package.description or package.ships_hwsim, package.name


def test_every_dependency_is_satisfiable_from_the_catalogue():
    for package in PACKAGES:
        for relation in package.depends:
            for alternative in relation.split("|"):
                match = RELATION.match(alternative.strip())
                assert match, f"{package.name}: unparseable relation {alternative!r}"
                name, op, version = match["name"], match["op"], match["ver"]
                if name in DEBIAN_DEPENDENCIES:
                    continue
                if not op:
                    assert name in VERSIONS or name in PROVIDED, f"{package.name} -> {name}"
                    continue
                assert any(dpkg_compare(v, op, version) for v in VERSIONS[name]), (
                    f"{package.name} {package.version}: no {name} satisfies ({op} {version})"
                )


def test_fabric_manager_needs_exactly_its_driver_version():
    for package in PACKAGES:
        if package.name.startswith("nvidia-fabricmanager-"):
            branch = package.name.rsplit("-", 1)[1]
            assert f"nvidia-driver-{branch}-server-open (= {package.version})" in package.depends


def test_driver_needs_utils_of_the_same_version_and_records_its_version():
    pin = MANIFEST["packages"]["nvidia-driver"]
    driver = by_name_version(pin["name"], pin["version"])
    assert f"nvidia-utils-570-server (= {pin['version']})" in driver.depends
    assert f"nvidia-compute-utils-570-server (= {pin['version']})" in driver.depends
    files = {path: text for path, text, _ in driver.files}
    assert files["/usr/share/kiln-hwsim/driver-version"] == "570.148.08\n"


def test_nccl_dev_and_tests_depend_on_libnccl2():
    for package in PACKAGES:
        if package.name == "libnccl-dev":
            assert package.depends == (f"libnccl2 (= {package.version})",)
        if package.name == "nccl-tests":
            assert "libnccl2" in package.relation_names()
            assert "openmpi-bin" in package.relation_names()


def test_doca_ofed_pulls_the_tools_packages_at_its_release_versions():
    pin = MANIFEST["packages"]["ofed"]
    doca = by_name_version(pin["name"], pin["version"])
    assert set(doca.relation_names()) == {"infiniband-diags", "ibverbs-utils", "mft", "perftest"}
    assert all(" (= " in relation for relation in doca.depends)


@pytest.mark.parametrize(
    "name, debian_bookworm_version",
    [("infiniband-diags", "44.0-2"), ("ibverbs-utils", "44.0-2"), ("perftest", "4.5+0.17-1")],
)
def test_vendor_builds_order_above_debians_own(name, debian_bookworm_version):
    for version in VERSIONS[name]:
        assert dpkg_compare(version, ">>", debian_bookworm_version), version


def test_each_simulated_tool_is_provided_by_the_package_that_provides_it_for_real():
    expected = {
        "nvidia-smi": "nvidia-utils-570-server",
        "dcgmi": "datacenter-gpu-manager-4-core",
        "ibstat": "infiniband-diags",
        "ibstatus": "infiniband-diags",
        "ibv_devinfo": "ibverbs-utils",
        "mlxconfig": "mft",
        "mlxfwmanager": "mft",
        "flint": "mft",
        "all_reduce_perf": "nccl-tests",
        "ib_write_bw": "perftest",
    }
    providers = defaultdict(set)
    for package in PACKAGES:
        for path, module in package.tools:
            providers[Path(path).name].add(package.name)
            assert module == Path(path).name.replace("-", "_")
            assert catalogue.HWSIM_DEP in package.depends, package.name
    for tool, package in expected.items():
        assert package in providers[tool], tool


def test_firmware_versions_cover_the_manifest_pins():
    for component, spec in MANIFEST["firmware"].items():
        if "blob" not in spec:
            continue
        assert spec["version"] in catalogue.FIRMWARE_VERSIONS[component], component
        assert len(catalogue.FIRMWARE_VERSIONS[component]) >= 2
        assert firmware_blobs.blob_file_name(component, spec["version"]) == spec["blob"]["file"]


def test_os_package_list_is_debian_names_without_vendor_overlap():
    assert len(set(catalogue.OS_PACKAGES)) == len(catalogue.OS_PACKAGES)
    assert not set(catalogue.OS_PACKAGES) & set(VERSIONS)
    assert all(re.fullmatch(r"[a-z0-9][a-z0-9+.-]+", name) for name in catalogue.OS_PACKAGES)


def test_libnccl2_tells_the_simulated_tests_its_version():
    for package in PACKAGES:
        if package.name == "libnccl2":
            files = dict((path, text) for path, text, _mode in package.files)
            upstream = package.version.split("-")[0]
            assert files["/usr/share/kiln-hwsim/nccl-version"].startswith(upstream + "+cuda")


def test_the_vendor_site_serves_every_release_the_simulated_hardware_starts_at():
    """An "old" node must be able to fetch its current and its golden image."""
    from kiln.lab.hwsim.profile import FIRMWARE, KNOWN_FIRMWARE, OLD_FIRMWARE

    for component, versions in catalogue.FIRMWARE_VERSIONS.items():
        assert {FIRMWARE[component], OLD_FIRMWARE[component]} <= set(versions)
        assert set(versions) <= set(KNOWN_FIRMWARE[component])

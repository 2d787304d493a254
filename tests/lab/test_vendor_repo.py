"""The lab's vendor repository, built and served for real, seen through a real apt.

apt runs in a throwaway state directory (its own sources, lists, cache and preferences); it
resolves against the host's dpkg status (read only; it has python3 and adduser, as a node's
base has) and never installs: `install -s` (simulate) and `--download-only`.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest

from kiln.lab import firmware_blobs
from kiln.lab.vendor import build_repository, server
from kiln.lab.vendor.catalogue import FIRMWARE_VERSIONS

pytestmark = pytest.mark.lab

DRIVER = "nvidia-driver-570-server-open"
V148 = "570.148.08-1kilnlab1"
V124 = "570.124.06-1kilnlab1"
INST = re.compile(r"^Inst (\S+) \((\S+) ")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Apt:
    """apt-get/apt-cache with every state path inside `root`."""

    def __init__(self, root: Path, sources: str, status: Path = Path("/var/lib/dpkg/status")):
        self.root = root
        for sub in ("etc/apt/preferences.d", "etc/apt/sources.list.d", "var/lib/apt/lists/partial",
                    "var/cache/apt/archives/partial"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root / "etc/apt/sources.list").write_text(sources)
        self.options = [
            "-o", f"Dir={root}/",
            "-o", f"Dir::State::status={status}",
            "-o", "Debug::NoLocking=1",
            "-o", "APT::Install-Recommends=0",
            # pytest's tmp dirs are private to root, where apt's _apt sandbox user cannot go
            "-o", "APT::Sandbox::User=root",
        ]

    def run(self, *args: str, tool: str = "apt-get") -> subprocess.CompletedProcess:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"}
        return subprocess.run(
            [tool, *self.options, *args], capture_output=True, text=True, env=env
        )

    def update(self) -> None:
        result = self.run("update")
        assert result.returncode == 0 and "W:" not in result.stderr, result.stderr

    def simulate(self, *packages: str) -> dict[str, str]:
        result = self.run("install", "-s", *packages)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr
        return dict(m.groups() for line in result.stdout.splitlines() if (m := INST.match(line)))

    def pin(self, pattern: str, version: str) -> None:
        (self.root / "etc/apt/preferences.d/kiln-lab.pref").write_text(
            f"Package: {pattern}\nPin: version {version}\nPin-Priority: 1001\n"
        )


@pytest.fixture(scope="module")
def lab_dir(tmp_path_factory) -> Path:
    lab = tmp_path_factory.mktemp("lab")
    build_repository(lab, os_packages=())
    return lab


@pytest.fixture(scope="module")
def served(lab_dir):
    port = free_port()
    server.start(lab_dir, host="127.0.0.1", port=port)
    yield f"http://127.0.0.1:{port}"
    server.stop(lab_dir)


@pytest.fixture
def apt(tmp_path, lab_dir, served) -> Apt:
    key = lab_dir / "vendor/keys/lab-archive.asc"
    apt = Apt(tmp_path / "apt", f"deb [signed-by={key}] {served}/apt kilnlab main\n")
    apt.update()
    return apt


def test_pinned_driver_resolves_to_exactly_that_version_and_its_exact_dependencies(apt):
    chosen = apt.simulate(f"{DRIVER}={V148}")
    assert chosen == {
        DRIVER: V148,
        "nvidia-utils-570-server": V148,
        "nvidia-compute-utils-570-server": V148,
        "libnvidia-compute-570-server": V148,
        "nvidia-kernel-common-570-server": V148,
        "kiln-hwsim-common": "1.0.0-1kilnlab1",
    }


def test_older_driver_with_an_apt_pin_brings_its_own_fabric_manager(apt):
    # apt's resolver takes dependencies at their candidate version, so moving to an older
    # release is done as kiln does it on real nodes: an apt preferences pin.
    apt.pin("nvidia-* libnvidia-*", V124)
    chosen = apt.simulate("nvidia-fabricmanager-570", DRIVER)
    assert chosen["nvidia-fabricmanager-570"] == V124
    nvidia = {name: version for name, version in chosen.items() if "nvidia" in name}
    assert len(nvidia) == 6 and set(nvidia.values()) == {V124}


def test_fabric_manager_refuses_a_different_driver_version(apt):
    result = apt.run("install", "-s", f"nvidia-fabricmanager-570={V124}", f"{DRIVER}={V148}")
    assert result.returncode != 0
    assert f"Depends: {DRIVER} (= {V124})" in result.stdout


def test_switching_branch_replaces_the_other_branch(apt):
    chosen = apt.simulate("nvidia-driver-550-server-open")
    assert chosen["nvidia-driver-550-server-open"] == "550.144.03-1kilnlab1"
    assert chosen["nvidia-utils-550-server"] == "550.144.03-1kilnlab1"


def test_doca_ofed_and_nccl_pins_from_the_manifest(apt):
    chosen = apt.simulate(
        "doca-ofed=2.9.1-1kilnlab1",
        "libnccl-dev=2.26.5-1+cuda12.8kilnlab1",
        "datacenter-gpu-manager-4-cuda12=1:4.2.3-1kilnlab1",
    )
    assert chosen["infiniband-diags"] == "2410mlnx54-1.2410114kilnlab1"
    assert chosen["mft"] == "4.30.1-8kilnlab1"
    assert chosen["libnccl2"] == "2.26.5-1+cuda12.8kilnlab1"
    assert chosen["datacenter-gpu-manager-4-core"] == "1:4.2.3-1kilnlab1"


def test_downloaded_packages_carry_the_simulated_tools(apt, tmp_path):
    result = apt.run("install", "-y", "--download-only", f"{DRIVER}={V148}", "mft")
    assert result.returncode == 0, result.stderr
    archives = tmp_path / "apt/var/cache/apt/archives"
    extracted = tmp_path / "root"
    for deb in archives.glob("*.deb"):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(extracted)], check=True)
    assert (extracted / "usr/share/kiln-hwsim/driver-version").read_text() == "570.148.08\n"
    for tool, module in (("nvidia-smi", "nvidia_smi"), ("mlxfwmanager", "mlxfwmanager")):
        script = (extracted / "usr/bin" / tool).read_text()
        assert f"kiln_hwsim.tools.{module} import main" in script
    assert (extracted / "usr/lib/python3/dist-packages/kiln_hwsim").is_dir()


def test_a_tampered_release_is_refused(tmp_path, lab_dir):
    copy = tmp_path / "lab"
    shutil.copytree(lab_dir / "vendor", copy / "vendor")
    dist = copy / "vendor/apt/dists/kilnlab"
    for name in ("InRelease", "Release"):
        text = (dist / name).read_text()
        (dist / name).write_text(text.replace("Label: kiln lab vendor", "Label: kiln lab vendoR"))
    port = free_port()
    server.start(copy, host="127.0.0.1", port=port)
    try:
        key = lab_dir / "vendor/keys/lab-archive.asc"
        source = f"deb [signed-by={key}] http://127.0.0.1:{port}/apt kilnlab main\n"
        apt = Apt(tmp_path / "apt", source)
        result = apt.run("update")
        assert result.returncode != 0
        assert "BADSIG" in result.stdout + result.stderr
        assert apt.run("install", "-s", DRIVER).returncode != 0
    finally:
        server.stop(copy)


def test_another_labs_key_is_refused(tmp_path, served):
    other = tmp_path / "other-lab"
    build_repository(other, os_packages=())
    key = other / "vendor/keys/lab-archive.asc"
    apt = Apt(tmp_path / "apt", f"deb [signed-by={key}] {served}/apt kilnlab main\n")
    result = apt.run("update")
    assert result.returncode != 0
    assert "NO_PUBKEY" in result.stdout + result.stderr


def test_firmware_blobs_are_served_with_their_checksums(served):
    sums = urllib.request.urlopen(f"{served}/firmware/SHA256SUMS").read().decode()
    for component, versions in FIRMWARE_VERSIONS.items():
        for version in versions:
            name = firmware_blobs.blob_file_name(component, version)
            data = urllib.request.urlopen(f"{served}/firmware/{name}").read()
            assert firmware_blobs.read_blob_header(data) == (component, version)
            assert f"{firmware_blobs.blob_sha256(component, version)}  {name}\n" in sums


def test_second_build_changes_nothing_in_the_served_tree(lab_dir):
    def snapshot() -> dict[str, tuple[int, int]]:
        return {
            str(p.relative_to(lab_dir)): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in (lab_dir / "vendor").rglob("*")
            if p.is_file()
        }

    before = snapshot()
    build_repository(lab_dir, os_packages=())
    assert snapshot() == before


def test_server_stop_leaves_nothing_listening(tmp_path, lab_dir):
    copy = tmp_path / "lab"
    shutil.copytree(lab_dir / "vendor", copy / "vendor")
    port = free_port()
    server.start(copy, host="127.0.0.1", port=port)
    pid = int((copy / server.PID_FILE).read_text())
    server.start(copy, host="127.0.0.1", port=port)  # already running: a no-op
    assert int((copy / server.PID_FILE).read_text()) == pid
    server.stop(copy)
    assert not (copy / server.PID_FILE).exists()
    assert not Path(f"/proc/{pid}").exists()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_os_mirror_holds_a_complete_dependency_closure(tmp_path):
    """Fetches from the host's Debian mirror (as the lab does once per base): `hello` and
    its closure, resolved against an empty system, so apt installs it from `os/` alone."""
    lab = tmp_path / "lab"
    build_repository(lab, os_packages=("hello",))
    pool = {deb.name.split("_")[0] for deb in (lab / "vendor/os/pool/main").glob("*.deb")}
    assert {"hello", "libc6"} <= pool
    port = free_port()
    server.start(lab, host="127.0.0.1", port=port)
    try:
        empty = tmp_path / "status"
        empty.touch()
        key = lab / "vendor/keys/lab-archive.asc"
        apt = Apt(
            tmp_path / "apt",
            f"deb [signed-by={key}] http://127.0.0.1:{port}/os bookworm main\n",
            status=empty,
        )
        apt.update()
        chosen = apt.simulate("hello")
        assert "hello" in chosen and "libc6" in chosen
        # cached: a second build downloads nothing and rewrites nothing
        index = lab / "vendor/os/dists/bookworm/InRelease"
        mtime = index.stat().st_mtime_ns
        build_repository(lab, os_packages=("hello",))
        assert index.stat().st_mtime_ns == mtime
    finally:
        server.stop(lab)

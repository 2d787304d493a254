"""`apt-get install` on a lab node, from the lab's vendor and OS repositories only.

Nodes have no route out of the lab: everything they install comes from
http://10.231.0.1:8081/ (built here with the full OS package list on first use, then cached
in the lab directory).
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from kiln.lab.vendor import build_repository, server

pytestmark = pytest.mark.lab

DRIVER = "nvidia-driver-570-server-open"
V148 = "570.148.08-1kilnlab1"
V124 = "570.124.06-1kilnlab1"
# The node already points at the lab's os/ mirror (as MAAS points a node at its archive);
# the vendor repository is what a deploy adds.
SOURCES = "deb [signed-by=/etc/apt/keyrings/kiln-lab.asc] http://10.231.0.1:8081/apt kilnlab main\n"
APT = "DEBIAN_FRONTEND=noninteractive apt-get -q -y -o Dpkg::Use-Pty=0"


@pytest.fixture(scope="module")
def node(lab, labtools):
    lab_dir = Path(lab.lab_dir)
    build_repository(lab_dir)
    server.start(lab_dir)
    name = [n.name for n in lab.nodes if n.role == "gpu"][-1]
    key = (lab_dir / "vendor/keys/lab-archive.asc").read_text()
    labtools.ssh(
        lab,
        name,
        "mkdir -p /etc/apt/keyrings && "
        f"printf %s {shlex.quote(key)} > /etc/apt/keyrings/kiln-lab.asc && "
        f"printf %s {shlex.quote(SOURCES)} > /etc/apt/sources.list.d/kiln-lab.list && "
        f"{APT} update",
    )

    def run(command: str, check: bool = True) -> str:
        return labtools.ssh(lab, name, command, check=check)

    run.name = name

    yield run
    run(
        f"{APT} purge 'nvidia-*' 'libnvidia-*' kiln-hwsim-common jq; "
        "rm -f /etc/apt/sources.list.d/kiln-lab.list /etc/apt/preferences.d/kiln-lab.pref",
        check=False,
    )


def installed(run, *packages: str) -> dict[str, str]:
    out = run("dpkg-query -W -f '${Package} ${Version}\\n' " + " ".join(packages))
    return dict(line.split(" ", 1) for line in out.splitlines())


def test_installing_a_driver_version_installs_exactly_it_and_its_tools(node):
    node(f"{APT} install {DRIVER}={V148}")
    versions = installed(node, DRIVER, "nvidia-utils-570-server", "nvidia-compute-utils-570-server")
    assert set(versions.values()) == {V148}
    assert node("cat /usr/share/kiln-hwsim/driver-version") == "570.148.08\n"
    shebang = node("test -x /usr/bin/nvidia-smi && head -1 /usr/bin/nvidia-smi")
    assert shebang == "#!/usr/bin/python3\n"
    node("python3 -c 'import kiln_hwsim'")


def test_installed_tools_report_the_hardware_through_the_real_parsers(node, lab):
    """After install and a power cycle, the simulated tools on the node print what the
    parsers written against real captures read: the loaded driver, 8 H100s, 8 NDR HCAs."""
    from kiln.lab import cluster
    from kiln.roles.infiniband.parsers import parse_ibstat
    from kiln.roles.nvidia.parsers import parse_nvidia_smi_q

    node(f"{APT} install {DRIVER}={V148} doca-ofed")
    # The running module is the one loaded at boot: before a reboot there is none.
    before = node("nvidia-smi -q", check=False)
    assert "Failed to initialize NVML" in before or "couldn't communicate" in before
    name = node.name
    cluster.power_off(name)
    cluster.power_on(name, wait=True)
    smi = parse_nvidia_smi_q(node("nvidia-smi -q"))
    assert smi["driver_version"] == "570.148.08"
    assert len(smi["gpus"]) == 8
    assert {gpu["product_name"] for gpu in smi["gpus"]} == {"NVIDIA H100 80GB HBM3"}
    hcas = parse_ibstat(node("ibstat"))
    assert len(hcas) == 8
    assert {port["rate"] for hca in hcas for port in hca["ports"]} == {400}
    assert {port["link_layer"] for hca in hcas for port in hca["ports"]} == {"InfiniBand"}


def test_moving_to_an_older_release_with_a_pin(node):
    pref = f"Package: nvidia-* libnvidia-*\nPin: version {V124}\nPin-Priority: 1001\n"
    node(f"printf %s {shlex.quote(pref)} > /etc/apt/preferences.d/kiln-lab.pref")
    node(f"{APT} install --allow-downgrades {DRIVER} nvidia-fabricmanager-570")
    versions = installed(node, DRIVER, "nvidia-utils-570-server", "nvidia-fabricmanager-570")
    assert set(versions.values()) == {V124}
    assert node("cat /usr/share/kiln-hwsim/driver-version") == "570.124.06\n"


def test_debian_packages_come_from_the_os_mirror(node):
    node(f"{APT} install jq")
    assert node("echo '{\"a\": 1}' | jq .a") == "1\n"


def test_dmesg_on_a_node_is_its_simulated_kernel_log(node, labtools):
    """`dmesg` on a node shows its hardware's boot log, and a fault injected at run time
    appears there the way an Xid does on a real node, read by the real-fixture parser."""
    from kiln.roles.health.parsers import parse_kernel_log

    clean = parse_kernel_log(node("dmesg"))
    assert clean["lines"] > 0 and clean["xids"] == []
    labtools.kiln("fault", node.name, "xid", "gpu=2", "code=79")
    try:
        events = parse_kernel_log(node("dmesg"))["xids"]
    finally:
        labtools.kiln("fault", node.name, "--clear", "xid")
    assert [event["xid"] for event in events] == [79]

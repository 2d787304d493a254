"""What kiln's health checks need of the lab, on a small deployed lab (gpu-001 and gpu-002
with Redfish BMCs, svc-001 with an IPMI BMC):

- time: roles/base (the real pyinfra run) configures chrony against the lab gateway, where
  the lab's own chronyd serves NTP; a node is synchronised to it within seconds of chronyd's
  start. `kiln lab fault NODE time-unsynced` drops the node's NTP at the host's end of its
  link: a chronyd started then never synchronises; clearing it brings sync back;
- the BMC event log: `kiln lab fault NODE bmc-event kind=...` adds an entry per protocol
  (IPMI Add SEL Entry at ipmi_sim; the Redfish BMC's LogServices/SEL), which kiln's own
  reader (kiln.roles.bmc.facts.event_log) reads back with its severity and message;
- boot_id: each node has its own, and a power cycle through the node's BMC gives it a new
  one (and an uptime counting from that boot).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kiln.lab import hostfaults, ntp, sel
from kiln.lab.inventory import lab_host_data
from kiln.lab.nodes import ssh_banner
from kiln.roles.bmc import facts

pytestmark = pytest.mark.lab

SHAPE = ("--deployed", "--nodes", "2", "--service-nodes", "1")
DEPLOY = "tests/lab/base_deploy.py"
SYNCED = "Leap status     : Normal"
UNSYNCED = "Leap status     : Not synchronised"
# Seconds a node may take to synchronise after chronyd starts (measured: about 4 s; iburst
# sends its first four requests 2 s apart).
SYNC_WITHIN = 20.0


def timing(line: str) -> None:
    """Into the run's summary (tests/lab/conftest.py TIMINGS): measured, not asserted."""
    lab_conftest = str(Path(__file__).with_name("conftest.py"))
    for module in list(sys.modules.values()):
        if getattr(module, "__file__", None) == lab_conftest and hasattr(module, "TIMINGS"):
            module.TIMINGS.append(f"health support: {line}")
            return
    print(f"lab timing: health support: {line}")


@pytest.fixture(scope="module")
def small_lab(lab_shapes):
    state = lab_shapes.ensure(SHAPE)
    yield state
    lab_shapes.forget()  # chrony is installed and configured on two nodes now


@pytest.fixture(scope="module")
def based(small_lab, labtools):
    """roles/base on gpu-001 and svc-001: chrony against the lab's NTP server."""
    repo = small_lab.endpoints["vendor_repo"]
    mirror = {"sources": [{"uri": f"{repo}apt", "suite": "kilnlab", "components": ["main"]},
                          {"uri": f"{repo}os", "suite": "bookworm", "components": ["main"]}],
              "key": f"{repo}keys/lab-archive.asc"}
    started = time.monotonic()
    result = subprocess.run(
        [str(labtools.bin / "pyinfra"), "-y", "inventory/lab.py", DEPLOY, "--limit", "gpu-001",
         "--limit", "svc-001", "--data", f"kiln_apt_mirror={json.dumps(mirror)}"],
        cwd=labtools.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=600)
    assert result.returncode == 0, result.stdout[-4000:]
    timing(f"roles/base on 2 nodes: {time.monotonic() - started:.1f} s")
    return small_lab


def node_ssh(state, labtools, node: str, command: str) -> str:
    return labtools.ssh(state, node, command)


# Inside the node: restart chronyd (as a reboot or the base role does), then follow
# `chronyc -n tracking` every 0.2 s for up to LIMIT seconds; print the seconds until it said
# Normal (or -1) and the last tracking output.
WATCH = r"""
import subprocess, sys, time
limit = float(sys.argv[1])
if sys.argv[2] == "restart":
    subprocess.run(["service", "chrony", "restart"], capture_output=True, check=True)
start = time.monotonic()
while True:
    out = subprocess.run(["chronyc", "-n", "tracking"], capture_output=True, text=True).stdout
    if "Leap status     : Normal" in out:
        print(f"{time.monotonic() - start:.2f}"); break
    if time.monotonic() - start > limit:
        print("-1"); break
    time.sleep(0.2)
print(out)
print(subprocess.run(["chronyc", "-n", "sources"], capture_output=True, text=True).stdout)
"""


def watch_chrony(state, labtools, node: str, limit: float, restart: bool = True,
                 ) -> tuple[float, str]:
    command = (f"python3 -c {shlex.quote(WATCH)} {limit} "
               f"{'restart' if restart else 'watch'}")
    out = node_ssh(state, labtools, node, command)
    first, _, rest = out.partition("\n")
    return float(first), rest


def test_a_node_synchronises_to_the_lab_ntp_server_within_seconds(based, labtools):
    seconds, tracking = watch_chrony(based, labtools, "gpu-001", SYNC_WITHIN)
    assert seconds >= 0, tracking
    assert "Reference ID    : 0AE70001 (10.231.0.1)" in tracking
    assert "Stratum         : 9" in tracking  # one below the lab server's 8
    timing(f"gpu-001 synchronised {seconds:.1f} s after chronyd started")
    # The node's NTP really came from the lab's chronyd: it lists the node as a client.
    clients = subprocess.run(["chronyc", "-h", str(ntp.socket_path(Path(based.lab_dir))), "-n",
                              "clients"], capture_output=True, text=True, check=True).stdout
    assert "10.231.0.11" in clients
    assert SYNCED in node_ssh(based, labtools, "svc-001", "chronyc -n tracking")


def test_time_unsynced_fault_then_clearing_it(based, labtools):
    labtools.kiln("fault", "gpu-001", "time-unsynced")
    try:
        # Long enough for iburst's requests and then some: unfaulted, it synced in ~4 s.
        seconds, tracking = watch_chrony(based, labtools, "gpu-001", 8.0)
        assert seconds < 0, tracking
        assert UNSYNCED in tracking and "Reference ID    : 00000000" in tracking
        source = [line for line in tracking.splitlines() if "10.231.0.1" in line]
        assert source and source[0].startswith("^?"), tracking  # unreachable
        assert source[0].split()[4] == "0", tracking  # reach register: nothing answered
        assert hostfaults.dropped_packets("gpu-001") >= 3
        # The fault is the node's link, not the server: the service node stays synchronised.
        assert SYNCED in node_ssh(based, labtools, "svc-001", "chronyc -n tracking")
    finally:
        labtools.kiln("fault", "gpu-001", "--clear", "time-unsynced")
    assert hostfaults.dropped_packets("gpu-001") is None
    seconds, tracking = watch_chrony(based, labtools, "gpu-001", SYNC_WITHIN)
    assert seconds >= 0 and "(10.231.0.1)" in tracking, tracking
    timing(f"gpu-001 synchronised again {seconds:.1f} s after the fault was cleared and "
           "chronyd restarted")


@pytest.mark.parametrize(("node", "kind", "message"), [
    ("gpu-001", "machine-check", sel.EVENTS["machine-check"].message),
    ("svc-001", "memory-uncorrectable", "Memory #0x70: Uncorrectable ECC (Asserted)"),
])
def test_a_bmc_event_is_read_back_by_kilns_reader(small_lab, labtools, node, kind, message):
    host = lab_host_data(small_lab, small_lab.node(node))
    before = facts.event_log(host)
    said = labtools.kiln("fault", node, "bmc-event", f"kind={kind}").stdout
    assert "added at" in said, said
    after = facts.event_log(host)
    assert len(after) == len(before) + 1
    entry = after[-1]
    assert (entry["severity"], entry["message"]) == ("Critical", message)
    created = datetime.fromisoformat(entry["created"])
    assert abs((datetime.now(UTC) - created).total_seconds()) < 120
    labtools.kiln("fault", node, "--clear", "bmc-event")
    assert facts.event_log(host) == []


def boot_ids(state, labtools, nodes: list[str]) -> dict[str, str]:
    return {n: node_ssh(state, labtools, n, "cat /proc/sys/kernel/random/boot_id").strip()
            for n in nodes}


def test_each_node_has_its_own_boot_id_and_a_power_cycle_makes_a_new_one(small_lab, labtools):
    nodes = ["gpu-001", "gpu-002", "svc-001"]
    ids = boot_ids(small_lab, labtools, nodes)
    host = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert len(set(ids.values())) == 3 and host not in ids.values(), ids
    for node, boot_id in ids.items():  # the host-side record of each node's boot
        assert (Path(small_lab.lab_dir) / "nodes" / node / "boot_id").read_text().strip() \
            == boot_id
    # A power cycle as kiln does one: through the node's BMC (Redfish ForceRestart).
    node = small_lab.node("gpu-002")
    started = time.monotonic()
    with closing(facts.bmc_for(lab_host_data(small_lab, node))) as bmc:
        bmc.power_cycle()
    deadline = time.monotonic() + 60
    new = ids["gpu-002"]
    while new == ids["gpu-002"]:
        assert time.monotonic() < deadline, "gpu-002 did not come back with a new boot"
        if ssh_banner(node.address, node.ssh_port):
            new = boot_ids(small_lab, labtools, ["gpu-002"])["gpu-002"]
        time.sleep(0.2)
    back = time.monotonic() - started
    assert new not in ids.values()
    uptime = float(node_ssh(small_lab, labtools, "gpu-002", "cut -d' ' -f1 /proc/uptime"))
    assert uptime <= time.monotonic() - started + 1, uptime  # counts from the new boot
    timing(f"gpu-002 back with a new boot_id {back:.1f} s after its BMC power cycle")
    assert boot_ids(small_lab, labtools, ["gpu-001"]) == {"gpu-001": ids["gpu-001"]}

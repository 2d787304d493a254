"""The lab's NTP server (lab/ntp.py: its chronyd configuration, and the real chronyd serving
on loopback, asked by an NTP client), the host-side fault registry (lab/hostfaults.py: what
it takes, the nftables scripts of `time-unsynced`, how `kiln lab fault` dispatches to it)
and the node launcher's per-boot clocks (lab/nodes.py)."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from kiln.lab import cli, hostfaults, ntp, services
from kiln.lab.host import LabError
from kiln.lab.nodes import LAUNCHER, time_namespace_options
from kiln.lab.state import default_endpoints

# -- NTP server ---------------------------------------------------------------------------


def test_config_serves_the_lab_from_the_gateway_only_and_keeps_its_files_in_the_lab():
    text = ntp.config_text(Path("/var/lib/kiln-lab/ntp"))
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert lines == [
        "bindaddress 10.231.0.1",
        "port 123",
        "allow 10.231.0.0/23",
        "local stratum 8",
        "cmdport 0",
        "bindcmdaddress /var/lib/kiln-lab/ntp/chronyd.sock",
        "pidfile /var/lib/kiln-lab/ntp/chronyd.pid",
        "driftfile /var/lib/kiln-lab/ntp/chrony.drift",
    ]
    # No upstream: the lab has no route out, and the host's clock is the reference.
    assert not any(line.startswith(("server", "pool", "peer")) for line in lines)


def test_chronyd_never_sets_this_machines_clock():
    argv = ntp.argv(Path("/lab/ntp/chrony.conf"))
    assert argv[0] == "chronyd" and "-x" in argv
    assert argv[argv.index("-f") + 1] == "/lab/ntp/chrony.conf"
    assert "-d" in argv  # foreground: the service's pid is chronyd's
    assert argv[argv.index("-u") + 1] == "_chrony"


def test_state_lists_the_ntp_endpoint():
    assert default_endpoints()["ntp"] == "ntp://10.231.0.1"


def _chrony_user() -> bool:
    try:
        pwd.getpwnam(ntp.USER)
    except KeyError:
        return False
    return True


needs_chronyd = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("chronyd") is None or not _chrony_user(),
    reason="the real chronyd needs root, Debian's chrony package (kiln/lab/host-packages.txt)")


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def world_searchable_lab():
    """A lab directory chronyd (as _chrony) can get into: pytest's tmp_path is 0700."""
    lab = Path(tempfile.mkdtemp(prefix="kiln-ntp-test-"))
    lab.chmod(0o755)
    yield lab
    services.stop_all(lab)
    shutil.rmtree(lab, ignore_errors=True)


@needs_chronyd
def test_real_chronyd_answers_ntp_clients_at_stratum_8_and_stops_cleanly(world_searchable_lab):
    lab, port = world_searchable_lab, free_udp_port()
    summary = ntp.start(lab, address="127.0.0.1", port=port, clients="127.0.0.0/8")
    assert f"127.0.0.1 UDP {port}" in summary
    pid = int((services.services_dir(lab) / "ntp.pid").read_text())
    answer = ntp.ask("127.0.0.1", port)
    assert answer["mode"] == 4 and answer["stratum"] == ntp.STRATUM
    assert answer["leap"] == 0  # synchronised: its local clock is its reference
    assert abs(answer["time"] - time.time()) < 5
    assert "Stratum         : 8" in ntp.tracking(lab)
    assert "already running" in ntp.start(lab, address="127.0.0.1", port=port)
    ntp.stop(lab)
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    with pytest.raises(OSError):
        ntp.ask("127.0.0.1", port, timeout=0.5)


@needs_chronyd
def test_a_lab_directory_chronyd_cannot_enter_is_refused_saying_why(tmp_path):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    with pytest.raises(LabError, match=r"cannot enter .*private \(mode 700\)"):
        ntp.start(private / "lab", address="127.0.0.1", port=free_udp_port())


# -- host-side faults ----------------------------------------------------------------------


@pytest.mark.parametrize(("argv", "mine"), [
    (["gpu-001", "time-unsynced"], True),
    (["svc-001", "bmc-event", "kind=ac-lost"], True),
    (["gpu-001", "--clear", "time-unsynced"], True),
    (["gpu-001", "--clear", "bmc-event"], True),
    (["gpu-001", "--clear"], False),  # every kind: both registries (lab/cli.py)
    (["gpu-001", "--clear", "xid"], False),
    (["gpu-001", "xid", "gpu=1", "code=79"], False),
    (["--list"], False),
    ([], False),
])
def test_the_registry_takes_only_its_own_kinds(argv, mine):
    assert hostfaults.handles(argv) is mine


@pytest.mark.parametrize(("kind", "pairs", "error"), [
    ("bmc-event", [], r"kind= is required"),
    ("bmc-event", ["kind=meteor"], r"kind='meteor' is not one of ac-lost"),
    ("bmc-event", ["gpu=1", "kind=ac-lost"], r"no field 'gpu' \(fields: kind\)"),
    ("time-unsynced", ["server=10.0.0.1"], r"no field 'server' \(fields: none\)"),
    ("bmc-event", ["ac-lost"], r"expected FIELD=VALUE"),
])
def test_bad_arguments_are_refused_naming_the_field(kind, pairs, error):
    with pytest.raises(LabError, match=error):
        hostfaults._parse(kind, pairs)


def test_every_bmc_event_kind_the_cli_takes_is_a_sel_event():
    from kiln.lab.sel import EVENTS

    assert set(hostfaults.KINDS["bmc-event"][0]["kind"]) == set(EVENTS)


def test_time_unsynced_drops_ntp_on_ingress_of_the_nodes_veth():
    script = hostfaults.drop_ntp_script("gpu-001", "kv-gpu-001")
    assert "table netdev kiln_lab {" in script
    assert 'type filter hook ingress device "kv-gpu-001" priority 0; policy accept;' in script
    # Flushed before the rule goes in: a second apply holds one rule, not two.
    assert script.index("flush chain netdev kiln_lab time_unsynced_gpu_001") < script.index(
        "add rule netdev kiln_lab time_unsynced_gpu_001 udp dport 123 counter drop")
    clear = hostfaults.allow_ntp_script("gpu-001", "kv-gpu-001")
    assert clear.rstrip().endswith("delete chain netdev kiln_lab time_unsynced_gpu_001")


needs_nft = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("nft") is None,
                               reason="nftables needs root and the nft tool")


@needs_nft
def test_the_scripts_apply_and_clear_on_a_real_veth():
    """A scratch netns with a veth, as a lab node has: NTP from inside is dropped (counted)
    at the host end, other UDP passes; clearing removes the chain; both are idempotent. Its
    own table, so a running lab's (`kiln lab down` removes it) is never touched."""
    ns, host_end, node, table = "kilnut-ntp", "kvut-ntp", "ut-ntp", "kiln_lab_unittest"
    run = subprocess.run
    run(["ip", "netns", "add", ns], check=True)
    try:
        run(["ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", ns],
            check=True)
        run(["ip", "addr", "add", "10.254.77.1/24", "dev", host_end], check=True)
        run(["ip", "link", "set", host_end, "up"], check=True)
        for command in ("addr add 10.254.77.2/24 dev eth0", "link set eth0 up"):
            run(["ip", "-n", ns, *command.split()], check=True)
        hostfaults.drop_ntp(node, host_end, table)
        hostfaults.drop_ntp(node, host_end, table)  # again: still one rule
        send = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                "[s.sendto(bytes(48), ('10.254.77.1', p)) for p in (123, 123, 124)]")
        run(["ip", "netns", "exec", ns, "python3", "-c", send], check=True)
        assert hostfaults.dropped_packets(node, table) == 2
        listed = run(["nft", "list", "chain", "netdev", table, hostfaults.chain_name(node)],
                     capture_output=True, text=True).stdout
        assert listed.count("udp dport 123") == 1
        hostfaults._nft(hostfaults.allow_ntp_script(node, host_end, table))
        hostfaults._nft(hostfaults.allow_ntp_script(node, host_end, table))
        assert hostfaults.dropped_packets(node, table) is None
    finally:
        run(["ip", "link", "del", host_end], capture_output=True)
        run(["ip", "netns", "del", ns], capture_output=True)
        run(["nft", "delete", "table", "netdev", table], capture_output=True)


def test_kiln_lab_fault_asks_the_host_registry_first(monkeypatch, capsys):
    seen = {"host": [], "hwsim": []}
    monkeypatch.setattr(hostfaults, "fault_command",
                        lambda argv: seen["host"].append(argv) or 0)
    import kiln.lab.integrations as integrations

    monkeypatch.setattr(integrations, "fault_command",
                        lambda argv: seen["hwsim"].append(argv) or 0)
    monkeypatch.setattr("kiln.lab.cluster.sync_rail_links", lambda node: None)
    assert cli.run(["fault", "gpu-001", "time-unsynced"]) == 0
    assert cli.run(["fault", "gpu-001", "xid", "gpu=1"]) == 0
    assert cli.run(["fault", "gpu-001", "--clear"]) == 0  # both
    assert cli.run(["fault", "--list"]) == 0
    assert seen["host"] == [["gpu-001", "time-unsynced"], ["gpu-001", "--clear"]]
    assert seen["hwsim"] == [["gpu-001", "xid", "gpu=1"], ["gpu-001", "--clear"], ["--list"]]
    listed = capsys.readouterr().out
    assert "time-unsynced" in listed and "bmc-event" in listed


def test_clearing_every_kind_with_no_lab_up_leaves_it_to_the_simulator(tmp_path, monkeypatch):
    monkeypatch.setenv("KILN_LAB_DIR", str(tmp_path))
    assert hostfaults.clear(tmp_path, "gpu-001") == []


# -- the node launcher: per-boot boot_id and clocks ----------------------------------------


def test_the_launcher_binds_a_per_boot_boot_id_over_the_kernels():
    assert 'echo "$KILN_BOOT_ID" > "$root/run/kiln/boot_id"' in LAUNCHER
    bind = 'mount --bind "$root/run/kiln/boot_id" "$root/proc/sys/kernel/random/boot_id"'
    assert bind in LAUNCHER
    # After /proc is mounted, before the pivot.
    assert LAUNCHER.index('mount -t proc') < LAUNCHER.index(bind) < LAUNCHER.index("pivot_root")


def test_time_namespace_offsets_start_the_nodes_clocks_near_zero():
    options = time_namespace_options()
    assert options[0] == "--time"
    offsets = dict(option.lstrip("-").split("=") for option in options[1:])
    boottime = time.clock_gettime(time.CLOCK_BOOTTIME)
    assert -1 < boottime + int(offsets["boottime"]) < 5
    monotonic = time.clock_gettime(time.CLOCK_MONOTONIC)
    assert -1 < monotonic + int(offsets["monotonic"]) < 5


@pytest.mark.skipif(os.geteuid() != 0, reason="a time namespace needs root")
def test_uptime_in_the_time_namespace_counts_from_its_start():
    result = subprocess.run(["unshare", "--fork", *time_namespace_options(), "--",
                             "cat", "/proc/uptime"], capture_output=True, text=True, check=True)
    assert 0 <= float(result.stdout.split()[0]) < 5

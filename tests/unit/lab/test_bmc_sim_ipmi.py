"""The lab's IPMI BMC: the chassis-control program's logic (lab power is a recorder), and the
real ipmi_sim with the lab's configuration on loopback, driven by the real ipmitool over
RMCP+ (lanplus), with the recorder as its chassis (tests/support/bmc_ipmi_recorder.py)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_bmc_sim_redfish_driver import PowerRecorder

from kiln.lab.bmc import ipmi
from kiln.lab.bmc.ipmi_chassis import Chassis, ChassisError, run
from kiln.lab.hwsim.lab_hooks import prepare_node_hardware
from kiln.lab.hwsim.profile import FIRMWARE

NODE = "svc-001"
USER, PASSWORD = "kilnabcdef", "Pw0123456789abcdefXY"  # 20 characters: IPMI 2.0's longest


@pytest.fixture
def lab(tmp_path):
    prepare_node_hardware(tmp_path, NODE, 9, "service", None)
    return tmp_path


@pytest.fixture
def power():
    return PowerRecorder()


@pytest.fixture
def chassis(lab, power):
    return Chassis(lab, NODE, power)


# -- the chassis-control program ------------------------------------------------------


def test_get_power_and_boot(chassis, power):
    assert run(chassis, ["get", "power", "boot"]) == "power:0\nboot:default\n"
    power.state = "on"
    assert run(chassis, ["get", "power"]) == "power:1\n"


def test_power_on_off_follow_the_node(chassis, power):
    run(chassis, ["set", "power", "1"])
    run(chassis, ["set", "power", "1"])  # already on: nothing
    run(chassis, ["set", "power", "0"])
    run(chassis, ["set", "power", "0"])
    assert power.calls == [("on", NODE, "disk", False), ("off", NODE)]


def test_bootdev_pxe_is_used_by_the_next_power_on_only(chassis, power):
    run(chassis, ["set", "boot", "pxe"])
    assert run(chassis, ["get", "boot"]) == "boot:pxe\n"
    run(chassis, ["set", "power", "1"])
    assert power.calls[-1] == ("on", NODE, "pxe", False)
    assert run(chassis, ["get", "boot"]) == "boot:default\n"
    run(chassis, ["set", "reset", "1"])
    assert power.calls[-1] == ("cycle", NODE, "disk", False)


def test_reset_with_pxe_and_soft_off(chassis, power):
    power.state = "on"
    run(chassis, ["set", "boot", "pxe", "reset", "1"])
    run(chassis, ["set", "shutdown", "1"])
    assert power.calls == [("cycle", NODE, "pxe", False), ("off", NODE)]


def test_reset_of_an_off_chassis_does_nothing(chassis, power):
    run(chassis, ["set", "reset", "1"])
    assert power.calls == []


def test_bootdev_none_clears(chassis):
    run(chassis, ["set", "boot", "pxe"])
    run(chassis, ["set", "boot", "none"])
    assert chassis.boot_device() == "default"


@pytest.mark.parametrize("words, why", [
    ([], "no operation"),
    (["get", "fan"], "get fan: not a chassis parameter"),
    (["set", "power"], "a parameter without a value"),
    (["set", "power", "2"], "set power 2: expected 0 or 1"),
    (["set", "boot", "floppy"], "set boot floppy: not one of"),
    (["check", "power", "1"], "check is not supported"),
    (["frob"], "unknown operation 'frob'"),
])
def test_bad_requests_say_what(chassis, power, words, why):
    with pytest.raises(ChassisError, match=why):
        run(chassis, words)
    assert power.calls == []


def test_firmware_revision_is_bcd():
    assert ipmi.firmware_revision("1.08.00") == ("0x1", "0x08")
    assert ipmi.firmware_revision("2.17") == ("0x2", "0x17")
    with pytest.raises(ipmi.IpmiError, match="'x' is not MAJOR.MINOR"):
        ipmi.firmware_revision("x")


def test_config_names_the_node_and_holds_no_password(lab):
    lan_conf, emu = ipmi.write_config(lab, NODE, "10.231.1.19", 623)
    text = lan_conf.read_text()
    assert "addr 10.231.1.19 623" in text
    assert "-m kiln.lab.bmc.ipmi_chassis --lab" in text and f"--node {NODE}" in text
    assert not [line for line in text.splitlines() if line.split()[:1] == ["user"]]
    assert "mc_add 0x20 0 no-device-sdrs 0x01 0x1 0x08" in emu.read_text()


def test_user_store_is_private_in_ipmi_sims_format(tmp_path):
    path = ipmi.write_user_store(tmp_path, NODE, "kiln-x", PASSWORD)
    assert path == tmp_path / "ipmi_sim" / NODE / "users.mc20"
    assert path.stat().st_mode & 0o777 == 0o600
    lines = path.read_text().splitlines()
    assert "2.username:d:kiln\\2Dx" + "\\00" * 10 in lines
    assert f"2.passwd:d:{PASSWORD}" in lines
    assert {"2.valid:i:1", "2.privilege:i:4", "2.allowed_auths:i:4"} <= set(lines)


@pytest.mark.parametrize("username, password, why", [
    ("u" * 17, PASSWORD, "user name must be 1 to 16 bytes"),
    (USER, "p" * 21, "password must be 1 to 20 bytes"),
    (USER, "", "password must be 1 to 20 bytes"),
    (USER, "pässword", "password must be printable ASCII"),
])
def test_credentials_ipmi_cannot_carry_are_refused(tmp_path, username, password, why):
    with pytest.raises(ipmi.IpmiError, match=why):
        ipmi.write_user_store(tmp_path, NODE, username, password)


def test_udp_bound_sees_a_bound_socket():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        assert ipmi.udp_bound("127.0.0.1", port)
    assert not ipmi.udp_bound("127.0.0.1", port)


def test_bound_by_tells_whose_socket_it_is():
    # ipmi_sim binds with SO_REUSEADDR, so a leftover one and a new one can share a port:
    # "bound" must mean bound by the process that was just started.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            assert ipmi.bound_by(os.getpid(), "127.0.0.1", port)
            assert not ipmi.bound_by(other.pid, "127.0.0.1", port)
        finally:
            other.kill()
            other.wait()


def test_a_port_taken_by_another_program_is_refused_naming_it(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        with pytest.raises(ipmi.IpmiError, match=rf"{NODE}: BMC address 127.0.0.1 UDP {port} "
                                                 rf"is taken by pid {os.getpid()} \(.*python"):
            ipmi._refuse_taken_port(tmp_path, NODE, "127.0.0.1", port)


# -- the real ipmi_sim and ipmitool ---------------------------------------------------

needs_openipmi = pytest.mark.skipif(
    not (shutil.which("ipmi_sim") and shutil.which("ipmitool")),
    reason="ipmi_sim/ipmitool not installed (lab/host-packages.txt: openipmi, ipmitool)",
)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def bmc(lab):
    record = lab / "power.json"
    record.write_text(json.dumps({"state": "off", "calls": []}))
    recorder = Path(__file__).resolve().parents[2] / "support" / "bmc_ipmi_recorder.py"
    chassis = " ".join(shlex.quote(a) for a in
                       [sys.executable, str(recorder), str(record), str(lab), NODE])
    port = free_udp_port()
    lan_conf, emu = ipmi.write_config(lab, NODE, "127.0.0.1", port, chassis=chassis)
    state = lab / "ipmi-state"
    ipmi.write_user_store(state, NODE, USER, PASSWORD)
    process = subprocess.Popen(["ipmi_sim", "-c", str(lan_conf), "-f", str(emu), "-s", str(state),
                                "-n"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not ipmi.udp_bound("127.0.0.1", port):
        assert process.poll() is None and time.monotonic() < deadline, "ipmi_sim did not start"
        time.sleep(0.05)
    yield {"port": port, "record": record}
    process.terminate()
    process.wait(timeout=10)


def ipmitool(bmc, *args, password=PASSWORD, cipher=("-C", "3")):
    return subprocess.run(
        ["ipmitool", "-I", "lanplus", *cipher, "-H", "127.0.0.1", "-p", str(bmc["port"]),
         "-U", USER, "-P", password, *args], capture_output=True, text=True, timeout=60)


def calls(bmc):
    return [tuple(c) for c in json.loads(bmc["record"].read_text())["calls"]]


@needs_openipmi
def test_ipmitool_powers_the_node(bmc):
    assert ipmitool(bmc, "chassis", "power", "status").stdout.strip() == "Chassis Power is off"
    assert ipmitool(bmc, "chassis", "power", "on").returncode == 0
    assert ipmitool(bmc, "chassis", "power", "status").stdout.strip() == "Chassis Power is on"
    assert ipmitool(bmc, "chassis", "power", "off").returncode == 0
    assert calls(bmc) == [("on", NODE, "disk", False), ("off", NODE)]


@needs_openipmi
def test_ipmitool_bootdev_pxe_then_cycle_boots_pxe_once(bmc):
    ipmitool(bmc, "chassis", "power", "on")
    result = ipmitool(bmc, "chassis", "bootdev", "pxe")
    assert result.returncode == 0, result.stderr
    assert "Set Boot Device to pxe" in result.stdout
    assert ipmitool(bmc, "chassis", "power", "cycle").returncode == 0
    deadline = time.monotonic() + 10  # ipmi_sim powers on again 1 s after the off
    while len(calls(bmc)) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert calls(bmc) == [("on", NODE, "disk", False), ("off", NODE), ("on", NODE, "pxe", False)]
    ipmitool(bmc, "chassis", "power", "reset")
    assert calls(bmc)[-1] == ("cycle", NODE, "disk", False)


@needs_openipmi
def test_a_wrong_password_gets_no_session(bmc):
    # The first 16 characters: what a store cut to IPMI 1.5's length would have let in.
    result = ipmitool(bmc, "chassis", "power", "on", password=PASSWORD[:16])
    assert result.returncode != 0
    assert "Unable to establish IPMI v2 / RMCP+ session" in result.stderr
    assert calls(bmc) == []


@needs_openipmi
def test_sel_and_mc_info_answer(bmc):
    sel = ipmitool(bmc, "sel", "list")
    assert sel.returncode == 0 and "SEL has no entries" in sel.stdout + sel.stderr
    info = ipmitool(bmc, "mc", "info")
    major, minor = FIRMWARE["bmc"].split(".")[:2]
    assert f"Firmware Revision         : {int(major)}.{minor}" in info.stdout


@needs_openipmi
def test_without_a_cipher_suite_ipmitool_falls_back_and_works(bmc):
    # ipmitool's cipher-suite question goes unanswered by ipmi_sim 2.0.33; it retries, then
    # uses suite 3 (slow, so once here).
    result = ipmitool(bmc, "chassis", "power", "status", cipher=())
    assert result.stdout.strip() == "Chassis Power is off"


@needs_openipmi
def test_a_leftover_ipmi_sim_of_the_lab_is_stopped_before_a_new_start(lab, bmc):
    assert ipmi.udp_bound("127.0.0.1", bmc["port"])
    ipmi._refuse_taken_port(lab, NODE, "127.0.0.1", bmc["port"])
    assert not ipmi.udp_bound("127.0.0.1", bmc["port"])


@pytest.mark.parametrize(("code", "said"), [
    ("import sys; sys.exit(3)", "exited with status 3"),
    ("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)", "killed by SIGSEGV"),
])
def test_how_a_child_ended_is_kept(code, said):
    child = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 10
    while (status := ipmi._exit_status(child.pid)) is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert status == said


# -- why an ipmi_sim could end at start "with nothing in its log" (tests/lab/conftest.py
#    used to retry `kiln lab up` once over it) -----------------------------------------------

def _until_dead(pid: int) -> None:
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists():
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        if stat[0] == "Z":
            return
        assert time.monotonic() < deadline
        time.sleep(0.02)


SUICIDE = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]


def test_a_dropped_popen_loses_its_childs_status_to_the_next_popen():
    """The mechanism: subprocess keeps a dropped Popen of a live child on its `_active`
    list and reaps it in the next Popen() anywhere in the process (the BMCs start in a
    thread pool), so a later waitpid finds nothing: "how it ended" was lost."""
    pid = subprocess.Popen(SUICIDE).pid  # dropped at once, as services.start used to
    _until_dead(pid)
    subprocess.run(["true"], check=True)  # another thread's Popen, say
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def test_a_service_keeps_how_it_ended_past_other_popens(tmp_path):
    from kiln.lab import services

    pid = services.start(tmp_path, "bmc-dies", SUICIDE)
    _until_dead(pid)
    subprocess.run(["true"], check=True)
    assert ipmi._exit_status(pid) == "killed by SIGKILL"
    assert not services.running(tmp_path, "bmc-dies")
    services.stop(tmp_path, "bmc-dies")


def _sleeper(*args: str) -> subprocess.Popen:
    # a process whose command line names paths, as ipmi_sim's and the BMC emulators' do
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *args])


def test_teardown_kills_its_own_labs_strays_only(tmp_path):
    from kiln.lab.cluster import _kill_strays

    lab, sibling = tmp_path / "kiln-lab", tmp_path / "kiln-lab2"
    ours = _sleeper("-c", str(lab / "bmc/svc-001/lan.conf"))
    exact = _sleeper("--lab", str(lab))
    other = _sleeper("-c", str(sibling / "bmc/svc-001/lan.conf"))
    try:
        _kill_strays(lab)
        assert ours.wait(timeout=10) == exact.wait(timeout=10) == -9
        time.sleep(0.2)
        assert other.poll() is None  # another lab's, whose path only starts the same
    finally:
        for process in (ours, exact, other):
            process.kill()
            process.wait()


def test_only_this_labs_ipmi_sim_counts_as_its_leftover(tmp_path):
    lab = tmp_path / "kiln-lab"
    conf = lab / "bmc/svc-001/lan.conf"
    assert ipmi._is_lab_ipmi_sim(lab, f"ipmi_sim -c {conf} -n")
    assert ipmi._is_lab_ipmi_sim(lab, f"/usr/bin/ipmi_sim -c {conf} -n")
    assert not ipmi._is_lab_ipmi_sim(lab, f"ipmi_sim -c {tmp_path}/kiln-lab2/bmc/x/lan.conf -n")
    assert not ipmi._is_lab_ipmi_sim(lab, f"python3 -c pass {conf}")

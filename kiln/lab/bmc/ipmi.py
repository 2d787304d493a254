"""A lab node's IPMI BMC: OpenIPMI's real `ipmi_sim` on UDP 623 at the node's BMC address.

Per node, in `<lab>/bmc/<node>/` (0700):
- `lan.conf`: one LAN channel (RMCP and RMCP+, md5 for IPMI 1.5) at the BMC address and
  `chassis_control`, the program that powers the node (lab/bmc/ipmi_chassis.py);
- `bmc.emu`: ipmi_sim's commands making the BMC: one MC at 0x20 whose firmware revision is
  the node's BMC version, and a System Event Log;
- `ipmi-state/`: ipmi_sim's persistent state (users, SEL), new at every start. Once it
  listens, its SEL clock is set to this machine's time (`ipmitool sel time set now`), so the
  records it logs (lab/sel.py) are dated.

The BMC user (user 2, admin) is written into ipmi_sim's persistent user store,
`ipmi-state/ipmi_sim/<node>/users.mc20` (0600), which ipmi_sim reads at start (`man
ipmi_sim`, PERSISTENCE): its configuration file would cut a password to 19 characters, and
IPMI's Set User Password to 16, while IPMI 2.0 passwords (the lab's) are up to 20 bytes.

Clients: `ipmitool -I lanplus -H <address> -U <user> -P <password> chassis power status`.
ipmitool first asks for the cipher suites in an RMCP+ message that ipmi_sim 2.0.33 ignores;
it falls back to suite 3 after its retries (about 10 s). `-C 3` skips the question.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import sys
import time
import uuid
from pathlib import Path

from kiln.lab import sel, services
from kiln.lab.bmc import firmware

# udp_bound too: the IPMI tests and callers ask this module (lab/sockets.py holds them).
from kiln.lab.sockets import bound_by, socket_holders, udp_bound, udp_socket_inodes  # noqa: F401

MC_ADDRESS = "0x20"
USER_ID = 2
# The user store's fields: IPMI 2.0's 16-byte user name and 20-byte password.
USERNAME_BYTES = 16
PASSWORD_BYTES = 20
ADMIN = 4
AUTH_MD5 = 1 << 2  # IPMI 1.5 authentication types the user may use (RMCP+ needs none)


class IpmiError(RuntimeError):
    pass


def bmc_dir(lab: Path, node: str) -> Path:
    return Path(lab) / "bmc" / node


def chassis_command(lab: Path, node: str) -> str:
    """The chassis_control program line (ipmi_sim runs it with /bin/sh, appending words)."""
    argv = [sys.executable, "-m", "kiln.lab.bmc.ipmi_chassis", "--lab", str(lab), "--node", node]
    return " ".join(shlex.quote(a) for a in argv)


def firmware_revision(version: str) -> tuple[str, str]:
    """IPMI Get Device ID firmware revision (major, minor as BCD) of a "1.08.00" version."""
    parts = version.split(".")
    try:
        major, minor = int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        raise IpmiError(f"BMC version {version!r} is not MAJOR.MINOR[.x]") from None
    return f"0x{major & 0x7F:x}", f"0x{minor // 10 % 10:x}{minor % 10:x}"


def check_credentials(username: str, password: str) -> None:
    """IpmiError when IPMI cannot carry the user name or password."""
    for what, value, limit in (("user name", username, USERNAME_BYTES),
                               ("password", password, PASSWORD_BYTES)):
        if not value or len(value.encode()) > limit:
            raise IpmiError(f"the lab BMC {what} must be 1 to {limit} bytes for IPMI")
        if not value.isascii() or not value.isprintable():
            raise IpmiError(f"the lab BMC {what} must be printable ASCII for IPMI")


def _persist_bytes(value: str, size: int) -> str:
    """A fixed-size field in ipmi_sim's persist format (letters and digits as is, the rest
    as \\XX, upper-case hex: what its reader decodes)."""
    raw = value.encode().ljust(size, b"\0")
    return "".join(chr(b) if chr(b).isalnum() else f"\\{b:02X}" for b in raw)


def write_user_store(state: Path, node: str, username: str, password: str) -> Path:
    """ipmi_sim's persistent users of the BMC at 0x20: user 2 = the lab's BMC user, admin."""
    check_credentials(username, password)
    path = state / "ipmi_sim" / node / f"users.mc{int(MC_ADDRESS, 16):02x}"
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fields = {
        "valid": "i:1",
        "username": "d:" + _persist_bytes(username, USERNAME_BYTES),
        "passwd": "d:" + _persist_bytes(password, PASSWORD_BYTES),
        "privilege": f"i:{ADMIN}",
        "max_sessions": "i:10",
        "allowed_auths": f"i:{AUTH_MD5}",
        "link_auth": "i:0",
        "cb_only": "i:0",
    }
    _write_private(path, "".join(f"{USER_ID}.{name}:{value}\n" for name, value in fields.items()))
    return path


def write_config(lab: Path, node: str, address: str, port: int,
                 chassis: str | None = None) -> tuple[Path, Path]:
    """lan.conf and bmc.emu for the node's ipmi_sim (users: `write_user_store`).

    `chassis` is the chassis-control program line (default: lab.bmc.ipmi_chassis)."""
    directory = bmc_dir(lab, node)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    guid = _guid(lab, node)
    lan = "\n".join([
        f"# ipmi_sim LAN configuration of the lab BMC of {node} (lab/bmc/ipmi.py)",
        f'name "{node}"',
        f"set_working_mc {MC_ADDRESS}",
        "  startlan 1",
        f"    addr {address} {port}",
        "    priv_limit admin",
        "    allowed_auths_callback md5",
        "    allowed_auths_user md5",
        "    allowed_auths_operator md5",
        "    allowed_auths_admin md5",
        f"    guid {guid}",
        "  endlan",
        f'  chassis_control "{chassis or chassis_command(lab, node)}"',
        "",
    ])
    major, minor = firmware_revision(firmware.running_versions(lab, node)["bmc"])
    emu = "\n".join([
        f"# ipmi_sim commands making the lab BMC of {node} (lab/bmc/ipmi.py)",
        f"mc_setbmc {MC_ADDRESS}",
        # mc_add addr device-id sdrs device-rev fw-major fw-minor support manufacturer product
        f"mc_add {MC_ADDRESS} 0 no-device-sdrs 0x01 {major} {minor} 0x9f 0x1291 0xf02",
        f"sel_enable {MC_ADDRESS} 1000 0x0a",
        f"mc_enable {MC_ADDRESS}",
        "",
    ])
    lan_conf, emu_file = directory / "lan.conf", directory / "bmc.emu"
    lan_conf.write_text(lan)
    emu_file.write_text(emu)
    return lan_conf, emu_file


def _write_private(path: Path, text: str) -> None:
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def _guid(lab: Path, node: str) -> str:
    """The channel GUID (RMCP+ needs one): the node's, from its hardware profile's serial."""
    profile = json.loads(firmware.profile_path(lab, node).read_text())
    serial = profile["system"]["serial"]
    return uuid.uuid5(uuid.NAMESPACE_URL, f"kiln-lab-ipmi:{node}:{serial}").hex


ATTEMPTS = 3


def service_name(node: str) -> str:
    return f"bmc-{node}"


def _is_lab_ipmi_sim(lab: Path, command: str) -> bool:
    """Whether `command` (as socket_holders gives it) is an ipmi_sim of this lab: its
    configuration lies in the lab directory. A path test, not a substring one: another lab
    in "/var/lib/kiln-lab2" is not this lab's."""
    argv = shlex.split(command)
    inside = str(Path(lab).resolve()).rstrip("/") + "/"
    return bool(argv) and Path(argv[0]).name == "ipmi_sim" and any(
        arg.startswith(inside) for arg in argv[1:])


def _refuse_taken_port(lab: Path, node: str, address: str, port: int) -> None:
    """An earlier ipmi_sim of this lab still bound there is stopped; anyone else is an error.

    Two processes bound with SO_REUSEADDR share the port and the kernel gives each datagram
    to one of them: a leftover BMC would answer for the new one.
    """
    holders = socket_holders(udp_socket_inodes(address, port))
    for pid, command in holders.items():
        if _is_lab_ipmi_sim(lab, command):
            print(f"kiln lab: {node}: stopping a leftover ipmi_sim (pid {pid}) bound to "
                  f"{address} UDP {port}", file=sys.stderr)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 5
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        else:
            raise IpmiError(f"{node}: BMC address {address} UDP {port} is taken by pid {pid} "
                            f"({command}); stop it first")


def _exit_status(pid: int) -> str | None:
    """How our child `pid` ended ("exited with status 1", "killed by SIGSEGV"); None while it
    runs. A service's status is kept by lab.services (a concurrent Popen elsewhere in this
    process would otherwise reap it first); any other child is reaped here."""
    if services.started_here(pid):
        return services.exit_status(pid)
    try:
        reaped, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None  # not our child, or already collected
    if reaped == 0:
        return None
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


def _log_tail(lab: Path, node: str, size: int = 800) -> str:
    log = services.services_dir(lab) / (service_name(node) + ".log")
    try:
        return log.read_text(errors="replace")[-size:].strip()
    except FileNotFoundError:
        return "(no log)"


def start(lab: Path, node: str, address: str, port: int, username: str, password: str,
          timeout: float = 20.0) -> int:
    """Start the node's ipmi_sim (once it listens); returns its pid."""
    lan_conf, emu = write_config(lab, node, address, port)
    state = bmc_dir(lab, node) / "ipmi-state"
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(mode=0o700)
    write_user_store(state, node, username, password)
    boot_flag = bmc_dir(lab, node) / "ipmi-boot-device"
    boot_flag.unlink(missing_ok=True)
    _refuse_taken_port(lab, node, address, port)
    argv = ["ipmi_sim", "-c", str(lan_conf), "-f", str(emu), "-s", str(state), "-n"]
    # Reading its log: with -n (no console) ipmi_sim's own messages go to syslog only, and
    # its stdout ("IPMI Simulator version …", printed first) is block-buffered into the log,
    # written when it calls exit(). So an empty log means it did not exit but was killed by a
    # signal; lab.services keeps that status (exit_status), which a concurrent Popen used to
    # reap first. Seen now and then, before the port's holders were checked and before
    # cluster._kill_strays matched the lab directory as a path rather than a prefix: an
    # ipmi_sim that did not bind, or ended at start with an empty log. It is started again,
    # up to ATTEMPTS times; each start's outcome is kept for the error, and a start that
    # needed another is said on stderr (the lab tests put that line in their summary).
    outcomes = []
    for _attempt in range(ATTEMPTS):
        pid = services.start(lab, service_name(node), argv, env={"KILN_LAB_DIR": str(lab)})
        deadline = time.monotonic() + timeout
        while not bound_by(pid, address, port):
            ended = _exit_status(pid)
            if ended or not services.running(lab, service_name(node)):
                outcomes.append(f"{ended or 'exited'}, log ends {_log_tail(lab, node, 200)!r}")
                break
            if time.monotonic() > deadline:
                others = socket_holders(udp_socket_inodes(address, port))
                outcomes.append(f"pid {pid} not bound after {timeout:.0f} s"
                                + (f" (bound there: {others})" if others else ""))
                services.stop(lab, service_name(node))
                break
            time.sleep(0.1)
        else:
            if outcomes:
                print(f"kiln lab: {node}: ipmi_sim bound at start {len(outcomes) + 1} after: "
                      f"{'; '.join(outcomes)}", file=sys.stderr)
            # ipmi_sim's SEL clock starts at "pre-init" time (seconds since the host's boot):
            # set it, as a BMC's NTP or the host's BIOS does, so its SEL records are dated.
            try:
                sel.set_ipmi_clock(address, port, username, password)
            except sel.SelError as exc:
                raise IpmiError(f"{node}: setting the BMC's SEL clock: {exc}") from None
            return pid
    # What each start did is in the message: the next one to see this can tell a crash
    # from a bind that never happened.
    raise IpmiError(f"ipmi_sim of {node} is not listening on {address} UDP {port} after "
                    f"{ATTEMPTS} starts ({'; '.join(outcomes)}); see "
                    f"{services.services_dir(lab) / (service_name(node) + '.log')}")

"""The lab's NTP server: the real `chronyd`, serving the lab network from its gateway.

Nodes run real chrony (roles/base points it at `kiln_ntp_servers`, the lab gateway
10.231.0.1; lab/inventory.py), so the lab needs a real server there, as a site has its own.
It is a host-side lab service (lab/services.py) named `ntp`, started by `kiln lab up` before
the nodes boot and stopped by `kiln lab down`:

- `chronyd -d -4 -x -u _chrony -f <lab>/ntp/chrony.conf`: in the foreground (its pid is the
  service's), IPv4 only, and with `-x` it never adjusts this machine's clock: it serves the
  host's clock as it is, at `local stratum 8` (no upstream: the lab has no route out);
- bound to 10.231.0.1 UDP 123 only, answering 10.231.0.0/23 (`allow`);
- its own pid file, drift file and command socket under `<lab>/ntp/` (owned by `_chrony`,
  the user it drops to), and no UDP command port (`cmdport 0`), so nothing of it clashes
  with a chronyd of the host (/run/chrony, 127.0.0.1:323). Ask it with
  `chronyc -h <lab>/ntp/chronyd.sock -n tracking` (or `clients`).

A host daemon already serving NTP on the wildcard address takes the port: the start then
fails naming chronyd's own complaint (its log, `<lab>/services/ntp.log`).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from kiln.lab import services
from kiln.lab.host import LabError
from kiln.lab.sockets import bound_by, socket_holders, udp_socket_inodes
from kiln.lab.state import GATEWAY, NTP_URL

SERVICE = "ntp"
PORT = 123
# The lab network and the BMCs' (10.231.0.0/24 and 10.231.1.0/24).
CLIENTS = "10.231.0.0/23"
STRATUM = 8
START_ATTEMPTS = 2
USER = "_chrony"  # Debian's chrony package makes it
URL = NTP_URL


def ntp_dir(lab: Path) -> Path:
    return Path(lab) / "ntp"


def socket_path(lab: Path) -> Path:
    return ntp_dir(lab) / "chronyd.sock"


def config_text(directory: Path, address: str = GATEWAY, clients: str = CLIENTS,
                port: int = PORT, stratum: int = STRATUM) -> str:
    """chronyd's configuration: serve `clients` from `address` only, the local clock the
    reference; every file chronyd writes in `directory`."""
    return "\n".join([
        "# chronyd of the kiln lab's NTP server (kiln/lab/ntp.py); written at each `kiln lab up`.",
        "# No server lines: the reference is this machine's clock, which chronyd never adjusts",
        "# (it runs with -x).",
        f"bindaddress {address}",
        f"port {port}",
        f"allow {clients}",
        f"local stratum {stratum}",
        "# No UDP command port; the command socket is the lab's own (chronyc -h PATH).",
        "cmdport 0",
        f"bindcmdaddress {directory / 'chronyd.sock'}",
        f"pidfile {directory / 'chronyd.pid'}",
        f"driftfile {directory / 'chrony.drift'}",
        "",
    ])


def argv(config: Path, user: str = USER) -> list[str]:
    return ["chronyd", "-d", "-4", "-x", "-u", user, "-f", str(config)]


def _prepare(lab: Path, user: str, address: str, clients: str, port: int) -> Path:
    """`<lab>/ntp/` owned by the user chronyd drops to (it writes its socket and drift file
    there, and checks that nobody else can), with a fresh configuration."""
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        raise LabError(f"no user {user!r} for the lab's NTP server: install Debian's chrony "
                       "package (kiln/lab/host-packages.txt)") from None
    directory = ntp_dir(lab)
    directory.mkdir(parents=True, exist_ok=True)
    _check_reachable(directory.parent.resolve(), account)
    for stale in ("chronyd.sock", "chronyd.pid"):
        (directory / stale).unlink(missing_ok=True)
    os.chown(directory, account.pw_uid, account.pw_gid)
    directory.chmod(0o750)
    config = directory / "chrony.conf"
    config.write_text(config_text(directory, address, clients, port))
    config.chmod(0o644)
    return config


def _check_reachable(directory: Path, account: pwd.struct_passwd) -> None:
    """chronyd, once it is `account`, must get through every directory above its own."""
    for path in [directory, *directory.parents]:
        mode = path.stat()
        if mode.st_uid == account.pw_uid or mode.st_mode & 0o001:
            continue
        if mode.st_gid == account.pw_gid and mode.st_mode & 0o010:
            continue
        raise LabError(f"the lab's NTP server runs as {account.pw_name}, which cannot enter "
                       f"{path} (mode {mode.st_mode & 0o777:o}): give the lab directory "
                       "world-searchable parents (chmod o+x), or another KILN_LAB_DIR")


def start(lab: Path, log: Callable[[str], None] = print, *, address: str = GATEWAY,
          port: int = PORT, clients: str = CLIENTS, timeout: float = 10.0) -> str:
    """Start the lab's NTP server (no-op when it runs); a one-line summary. `address`,
    `port` and `clients` are the lab's unless a test serves elsewhere."""
    lab = Path(lab)
    summary = f"NTP server: chronyd at {address} UDP {port} (stratum {STRATUM}, {clients})"
    if services.running(lab, SERVICE):
        return summary + " (already running)"
    if shutil.which("chronyd") is None:
        raise LabError("chronyd is not installed: apt-get install chrony "
                       "(kiln/lab/host-packages.txt)")
    config = _prepare(lab, USER, address, clients, port)
    holders = socket_holders(udp_socket_inodes(address, port))
    if holders:
        raise LabError(f"{address} UDP {port} is taken by {holders}; stop it first")
    # Seen in CI now and then, right after a `kiln lab down`: chronyd running but not bound
    # to the gateway address within the timeout (its log was not kept then; the bridge's
    # address being re-added is the suspect). It is started again, up to START_ATTEMPTS
    # times; each start's outcome and log tail go in the error, and a start that needed
    # another is said on stderr (the lab tests put that line in their summary).
    outcomes: list[str] = []
    log_file = services.services_dir(lab) / f"{SERVICE}.log"
    for _attempt in range(START_ATTEMPTS):
        pid = services.start(lab, SERVICE, argv(config))
        deadline = time.monotonic() + timeout
        while not bound_by(pid, address, port):
            if not services.running(lab, SERVICE) or time.monotonic() > deadline:
                services.stop(lab, SERVICE)
                tail = log_file.read_text(errors="replace")[-600:] if log_file.exists() else ""
                outcomes.append(f"pid {pid} not bound after {timeout:.0f} s, log ends {tail!r}")
                break
            time.sleep(0.05)
        else:
            if outcomes:
                print(f"kiln lab: chronyd bound at start {len(outcomes) + 1} after: "
                      f"{'; '.join(outcomes)}", file=sys.stderr)
            return summary
    raise LabError(f"the lab's NTP server (chronyd) is not serving {address} UDP {port} "
                   f"after {START_ATTEMPTS} starts ({'; '.join(outcomes)}); see {log_file}")


def stop(lab: Path) -> None:
    services.stop(Path(lab), SERVICE)


def tracking(lab: Path) -> str:
    """`chronyc tracking` of the lab's server (what it serves: stratum, reference)."""
    result = subprocess.run(["chronyc", "-h", str(socket_path(lab)), "-n", "tracking"],
                            capture_output=True, text=True, timeout=10, check=False)
    if result.returncode != 0:
        raise LabError(f"chronyc tracking of the lab's NTP server: {result.stderr.strip()}")
    return result.stdout


NTP_EPOCH_OFFSET = 2208988800  # seconds from 1900-01-01 (NTP's era 0) to 1970-01-01


def ask(address: str = GATEWAY, port: int = PORT, timeout: float = 2.0) -> dict[str, object]:
    """One NTP client request (mode 3, version 4) to the server: what it answers (leap
    indicator, stratum, mode, its transmit time as a Unix time). OSError when it does not."""
    import socket
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(bytes([0x23]) + bytes(47), (address, port))
        data, _ = sock.recvfrom(512)
    if len(data) < 48:
        raise OSError(f"NTP answer of {len(data)} bytes from {address}:{port}")
    seconds, fraction = struct.unpack("!II", data[40:48])
    return {
        "leap": data[0] >> 6,
        "version": data[0] >> 3 & 0x7,
        "mode": data[0] & 0x7,
        "stratum": data[1],
        "time": seconds - NTP_EPOCH_OFFSET + fraction / 2**32,
    }

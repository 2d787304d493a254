"""The lab's host-side service processes: BMC emulators, the MAAS and UFM simulators, the
NTP server (lab/ntp.py).

Each runs detached from the `kiln lab up` that starts it (its own session), with its pid in
`<lab>/services/<name>.pid` and its output in `<lab>/services/<name>.log`. `stop` ends
exactly the recorded process and its process group (a recycled pid is recognised by the
command line recorded beside it), so `kiln lab down` leaves nothing behind.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path


class ServiceError(RuntimeError):
    pass


# The Popen of every service this process started. Kept, not dropped: subprocess puts a
# dropped Popen whose child still runs on its `_active` list, and the next Popen anywhere in
# the process (another thread's: the BMCs start in a thread pool) reaps it there if it has
# ended, so how it ended would be lost to anyone who asks later (exit_status).
_STARTED: dict[int, subprocess.Popen[bytes]] = {}


def services_dir(lab: Path) -> Path:
    return Path(lab) / "services"


def _files(lab: Path, name: str) -> tuple[Path, Path, Path]:
    directory = services_dir(lab)
    return directory / f"{name}.pid", directory / f"{name}.log", directory / f"{name}.cmdline"


def _recorded_pid(lab: Path, name: str) -> int | None:
    pid_file, _, cmdline_file = _files(lab, name)
    try:
        pid = int(pid_file.read_text().split()[0])
        running = Path(f"/proc/{pid}/cmdline").read_bytes()
        recorded = cmdline_file.read_bytes()
    except (FileNotFoundError, ValueError, IndexError):
        return None
    return pid if running == recorded else None


def running(lab: Path, name: str) -> bool:
    return _recorded_pid(lab, name) is not None


def _answers(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=0.5):
            return True
    except OSError:
        return False


def start(
    lab: Path,
    name: str,
    argv: list[str],
    *,
    port: tuple[str, int] | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 20.0,
) -> int:
    """Start `argv` as service `name` (no-op when it runs); wait for its TCP port if given."""
    existing = _recorded_pid(lab, name)
    if existing is not None:
        return existing
    pid_file, log_file, cmdline_file = _files(lab, name)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    _STARTED[process.pid] = process
    pid_file.write_text(f"{process.pid}\n")
    cmdline_file.write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    deadline = time.monotonic() + timeout
    while port is not None and not _answers(port):
        if process.poll() is not None or time.monotonic() > deadline:
            why = "exited" if process.poll() is not None else f"not answering after {timeout:.0f} s"
            stop(lab, name)
            tail = log_file.read_text(errors="replace")[-1500:]
            raise ServiceError(
                f"lab service {name} {why} (port {port[0]}:{port[1]}); {log_file}:\n{tail}"
            )
        time.sleep(0.1)
    return process.pid


def stop(lab: Path, name: str, timeout: float = 10.0) -> None:
    pid_file, _, cmdline_file = _files(lab, name)
    pid = _recorded_pid(lab, name)
    if pid is not None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + (timeout if sig == signal.SIGTERM else 5)
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not _alive(pid):
                break
    pid_file.unlink(missing_ok=True)
    cmdline_file.unlink(missing_ok=True)


def started_here(pid: int) -> bool:
    """Whether this process started `pid` as a service (and so keeps its exit status)."""
    return pid in _STARTED


def exit_status(pid: int) -> str | None:
    """How a service this process started ended ("exited with status 1", "killed by
    SIGKILL"); None while it runs, or when this process did not start it."""
    process = _STARTED.get(pid)
    if process is None or process.poll() is None:
        return None
    code = process.returncode
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


def running_any(lab: Path) -> bool:
    return any(running(lab, f.stem) for f in services_dir(lab).glob("*.pid"))


def stop_all(lab: Path) -> None:
    for pid_file in sorted(services_dir(lab).glob("*.pid")):
        stop(lab, pid_file.stem)


def _alive(pid: int) -> bool:
    if pid in _STARTED:
        _STARTED[pid].poll()  # collect it, keeping its status (exit_status)
    else:
        try:
            os.waitpid(pid, os.WNOHANG)  # collect it if it is our own child
        except ChildProcessError:
            pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"

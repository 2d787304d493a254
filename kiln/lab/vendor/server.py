"""Serve `<lab>/vendor/` over HTTP: the lab's "upstream" at http://10.231.0.1:8081/.

The server is Python's own `http.server` (threading, read-only, directory listing), run as a
separate process so it outlives the `kiln lab up` that started it; its pid is recorded in
`<lab>/vendor-server.pid`, and `stop()` ends exactly that process.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HOST = "10.231.0.1"
PORT = 8081
PID_FILE = "vendor-server.pid"
LOG_FILE = "vendor-server.log"


class ServerError(RuntimeError):
    pass


def url(host: str = HOST, port: int = PORT) -> str:
    return f"http://{host}:{port}/"


def _command(lab_dir: Path, host: str, port: int) -> list[str]:
    directory = str((lab_dir / "vendor").resolve())
    return [
        sys.executable, "-m", "http.server", str(port), "--bind", host, "--directory", directory,
    ]


def _recorded_pid(lab_dir: Path) -> int | None:
    """The pid in the pid file, if that process is still our server (pids get reused)."""
    try:
        pid = int((lab_dir / PID_FILE).read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ValueError, IndexError, ProcessLookupError):
        return None
    directory = str((lab_dir / "vendor").resolve()).encode()
    if b"http.server" in cmdline and directory in cmdline:
        return pid
    return None


def running(lab_dir: Path) -> bool:
    return _recorded_pid(Path(lab_dir)) is not None


def start(lab_dir: Path, host: str = HOST, port: int = PORT, timeout: float = 10.0) -> None:
    """Start serving `lab_dir/vendor` on host:port (no-op if this lab's server runs)."""
    lab_dir = Path(lab_dir)
    if _recorded_pid(lab_dir) is not None:
        return
    if not (lab_dir / "vendor").is_dir():
        raise ServerError(f"{lab_dir / 'vendor'} does not exist: build the repository first")
    log = open(lab_dir / LOG_FILE, "ab")
    try:
        process = subprocess.Popen(
            _command(lab_dir, host, port),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # not killed with the terminal that ran `kiln lab up`
        )
    finally:
        log.close()
    (lab_dir / PID_FILE).write_text(f"{process.pid}\n")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            (lab_dir / PID_FILE).unlink(missing_ok=True)
            tail = (lab_dir / LOG_FILE).read_text(errors="replace")[-1000:]
            raise ServerError(
                f"vendor repository server on {host}:{port} exited ({process.returncode}): {tail}"
            )
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    stop(lab_dir)
    raise ServerError(f"vendor repository server did not listen on {host}:{port} in {timeout}s")


def stop(lab_dir: Path, timeout: float = 5.0) -> None:
    """Stop this lab's server, if it runs; remove the pid file."""
    lab_dir = Path(lab_dir)
    pid = _recorded_pid(lab_dir)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            _reap(pid)
            time.sleep(0.05)
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)
            _reap(pid)
    (lab_dir / PID_FILE).unlink(missing_ok=True)


def _reap(pid: int) -> None:
    """Collect the exit status when the server is our own child (started in this process)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass

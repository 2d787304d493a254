"""Serve a Redfish mockup read-only with sushy-tools' `sushy-static`, for tests.

A mockup is a directory tree of `index.json` files captured from a real BMC (the HPE iLO 6
and DMTF ones in tests/fixtures/redfish/). `serve(mockup)` starts the real `sushy-static` on
a free loopback port and yields its Redfish root URL; it stops when the block ends:

    with serve(FIXTURES / "hpe-dl380a-gen11-h100nvl") as root:
        client = sushy.Sushy(root)
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

LOOPBACK = "127.0.0.1"


class StaticServerError(RuntimeError):
    pass


def sushy_static_command() -> list[str]:
    """sushy-tools' console script, beside the running Python (the same environment)."""
    script = Path(sys.executable).with_name("sushy-static")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from sushy_tools.static.main import main; "
                                  "sys.exit(main())"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def start(mockup: Path, port: int | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """Start sushy-static for `mockup`; (process, Redfish root URL) once it answers."""
    mockup = Path(mockup)
    if not (mockup / "index.json").is_file():
        raise StaticServerError(f"{mockup}: not a Redfish mockup (no index.json at its root)")
    port = port or free_port()
    process = subprocess.Popen(
        [*sushy_static_command(), "--interface", LOOPBACK, "--port", str(port),
         "--mockup-files", str(mockup)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,  # it prints every request's headers
        stderr=subprocess.PIPE,
    )
    root = f"http://{LOOPBACK}:{port}/redfish/v1"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StaticServerError(
                f"sushy-static for {mockup} exited {process.returncode}: "
                f"{process.stderr.read().decode(errors='replace')[-1000:]}"
            )
        try:
            if requests.get(root, timeout=1).status_code == 200:
                return process, root
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    stop(process)
    raise StaticServerError(f"sushy-static for {mockup} did not answer on {root} within 20 s")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stderr is not None:
        process.stderr.close()


@contextmanager
def serve(mockup: Path) -> Iterator[str]:
    """sushy-static serving `mockup` for the duration of the block; yields the root URL."""
    process, root = start(mockup)
    try:
        yield root
    finally:
        stop(process)

"""Shared by the burn-in tests (no tests here): a lab node's simulated hardware in a tmp dir,
and the lab's simulated burn-in tools run on it as separate processes, as a burn-in operation
runs them: stdout and stderr captured together, the exit status, a deadline that kills the
tool, and how long it ran."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from kiln.lab.hwsim.lab_hooks import on_node_boot, prepare_node_hardware

DRIVER = "570.148.08"


@dataclass(frozen=True)
class Captured:
    output: str
    rc: int | None
    timed_out: bool
    duration_s: float


class SimNode:
    def __init__(self, tmp: Path, faults: list[dict] | None = None, name: str = "gpu-001"):
        self.name = name
        lab, rootfs = tmp / "lab", tmp / "rootfs"
        tmp.mkdir(parents=True, exist_ok=True)
        faults_file = None
        if faults is not None:
            faults_file = tmp / "faults.json"
            faults_file.write_text(json.dumps({"faults": [{"node": name, **f} for f in faults]}))
        prepare_node_hardware(lab, name, 1, "gpu", faults_file)
        self.hw = lab / "hw" / name
        self.driver_file = rootfs / "usr/share/kiln-hwsim/driver-version"
        self.driver_file.parent.mkdir(parents=True)
        self.driver_file.write_text(DRIVER + "\n")
        on_node_boot(lab, name, rootfs)

    def _popen(self, module: str, argv: tuple[str, ...]) -> subprocess.Popen[str]:
        env = {**os.environ, "KILN_HW_DIR": str(self.hw),
               "KILN_HW_FLASH_DIR": str(self.hw / "flash"),
               "KILN_HWSIM_DRIVER_VERSION_FILE": str(self.driver_file),
               "KILN_HWSIM_FLAKY_SEED": "1"}
        code = f"import sys; from kiln.lab.hwsim.tools import {module}; sys.exit({module}.main())"
        return subprocess.Popen([sys.executable, "-c", code, *argv], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def run(self, module: str, *argv: str, deadline_s: float = 60.0) -> Captured:
        """One tool run to its end or its deadline (then killed, what it printed kept)."""
        start = time.monotonic()
        proc = self._popen(module, argv)
        try:
            out, _ = proc.communicate(timeout=deadline_s)
            return Captured(out, proc.returncode, False, time.monotonic() - start)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            return Captured(out, None, True, time.monotonic() - start)

    def ib_write_bw(self, hca: str, *argv: str, deadline_s: float = 30.0) -> Captured:
        """A loopback ib_write_bw on `hca`: the server side started first, the client's
        capture returned (the side a burn-in run reads)."""
        port = _free_port()
        common = ("-d", hca, "-p", str(port), *argv)
        server = self._popen("ib_write_bw", common)
        try:
            return self.run("ib_write_bw", *common, "127.0.0.1", deadline_s=deadline_s)
        finally:
            try:
                server.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                server.kill()
                server.communicate()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]

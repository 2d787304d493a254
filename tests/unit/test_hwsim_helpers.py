"""Shared by the test_hwsim_* tests (no tests here): a simulated node in a tmp dir."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
from pathlib import Path

from lab.hwsim.lab_hooks import on_node_boot, prepare_node_hardware

DRIVER = "570.148.08"


class Node:
    def __init__(self, tmp: Path, monkeypatch, faults: list[dict] | None = None,
                 name: str = "gpu-001", role: str = "gpu"):
        self.lab = tmp / "lab"
        self.rootfs = tmp / "rootfs"
        self.name = name
        faults_file = None
        if faults is not None:
            faults_file = tmp / "faults.json"
            faults_file.write_text(json.dumps({"faults": [{"node": name, **f} for f in faults]}))
        prepare_node_hardware(self.lab, name, 1, role, faults_file)
        self.hw = self.lab / "hw" / name
        self.driver_file = self.rootfs / "usr/share/kiln-hwsim/driver-version"
        self.driver_file.parent.mkdir(parents=True)
        self.driver_file.write_text(DRIVER + "\n")
        on_node_boot(self.lab, name, self.rootfs)
        monkeypatch.setenv("KILN_HW_DIR", str(self.hw))
        monkeypatch.setenv("KILN_HW_FLASH_DIR", str(self.hw / "flash"))
        monkeypatch.setenv("KILN_HWSIM_DRIVER_VERSION_FILE", str(self.driver_file))

    def run(self, tool: str, *argv: str) -> tuple[int, str]:
        module = importlib.import_module(f"lab.hwsim.tools.{tool}")
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = module.main(list(argv))
        return rc, out.getvalue()


def diff_lines(a: str, b: str) -> list[tuple[str, str]]:
    """Lines that differ between two outputs of the same length (timestamps dropped)."""
    la = [line for line in a.splitlines() if "Timestamp" not in line and "timestamp" not in line]
    lb = [line for line in b.splitlines() if "Timestamp" not in line and "timestamp" not in line]
    assert len(la) == len(lb), "outputs differ in length"
    return [(x, y) for x, y in zip(la, lb, strict=True) if x != y]

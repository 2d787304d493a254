"""Shared by the test_hwsim_* tests (no tests here): a simulated node in a tmp dir."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
from pathlib import Path

from kiln.lab.hwsim.lab_hooks import on_node_boot, prepare_node_hardware

DRIVER = "570.148.08"


class Node:
    def __init__(self, tmp: Path, monkeypatch, faults: list[dict] | None = None,
                 name: str = "gpu-001", role: str = "gpu"):
        self.lab = tmp / "lab"
        self.rootfs = tmp / "rootfs"
        self.name = name
        tmp.mkdir(parents=True, exist_ok=True)
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
        self.monkeypatch = monkeypatch
        self.monkeypatch.setenv("KILN_HWSIM_FLAKY_SEED", "1")

    def run(self, tool: str, *argv: str) -> tuple[int, str]:
        self.monkeypatch.setenv("KILN_HW_DIR", str(self.hw))
        self.monkeypatch.setenv("KILN_HW_FLASH_DIR", str(self.hw / "flash"))
        self.monkeypatch.setenv("KILN_HWSIM_DRIVER_VERSION_FILE", str(self.driver_file))
        module = importlib.import_module(f"kiln.lab.hwsim.tools.{tool}")
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = module.main(list(argv))
        return rc, out.getvalue()


# what each fault test compares: name -> (tool module, argv)
VIEWS = {
    "smi-q": ("nvidia_smi", ["-q"]),
    "smi-x": ("nvidia_smi", ["-q", "-x"]),
    "nvlink-s": ("nvidia_smi", ["nvlink", "-s"]),
    "nvlink-e": ("nvidia_smi", ["nvlink", "-e"]),
    "ibstat": ("ibstat", []),
    "ibstatus": ("ibstatus", []),
    "ibv_devinfo": ("ibv_devinfo", []),
    "mlxfwmanager": ("mlxfwmanager", ["--query"]),
    "dmesg": ("dmesg", []),
    "dcgmi": ("dcgmi", ["diag", "-r", "3"]),
    "nccl": ("all_reduce_perf", ["-b", "1G", "-e", "8G", "-g", "8"]),
}


def snapshot(node: Node) -> dict[str, tuple[int, list[str]]]:
    """Every view's exit status and lines, clock-dependent lines dropped."""
    out = {}
    for name, (tool, argv) in VIEWS.items():
        rc, text = node.run(tool, *argv)
        lines = [line for line in text.splitlines() if "imestamp" not in line and "Pid" not in line]
        out[name] = (rc, lines)
    return out


def changed(a: dict, b: dict) -> dict[str, list[tuple[str, str]]]:
    """view -> [(healthy line, faulted line)] for every view whose output differs."""
    result = {}
    for name in a:
        (rc_a, la), (rc_b, lb) = a[name], b[name]
        if (rc_a, la) == (rc_b, lb):
            continue
        pairs = [(x, y) for x, y in zip(la, lb, strict=False) if x != y]
        longer = la[len(lb):] if len(la) > len(lb) else lb[len(la):]
        pairs += [("", y) for y in longer] if len(lb) > len(la) else [(x, "") for x in longer]
        if rc_a != rc_b:
            pairs.append((f"rc={rc_a}", f"rc={rc_b}"))
        result[name] = pairs
    return result

"""What the simulated tools see: profile.json + faults.json + boot.json of one node.

boot.json (written by the lab when the node boots, see lab_hooks.on_node_boot):

    boot: N                      how many times the node has booted
    image_boots: N               how many of those were the first boot of a fresh image
    driver: "570.148.08" | null  the NVIDIA kernel module loaded at that boot
    boot_log: [[seconds, line]]  the driver's own kernel lines of that boot

flash/mlxconfig-active.json (written by `mlxfwreset reset` inside the node): mlxconfig values
a card reset has made current since the last boot, {hca name: {PARAM: value}}; the view
lays them over the profile's, and the next boot folds them into the profile.
"""

from __future__ import annotations

import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import (
    DEFAULT_DRIVER_VERSION_FILE,
    DEFAULT_FLASH_DIR,
    DEFAULT_HW_DIR,
    DRIVER_VERSION_FILE_ENV,
    FLASH_DIR_ENV,
    HW_DIR_ENV,
)
from .faults import apply_faults, fault_log_lines
from .profile import read_json

MLXCONFIG_ACTIVE = "mlxconfig-active.json"

# Seeds the flaky fault's coin, so a test (or a person reproducing a run) gets the same
# outcome; unset, every invocation draws afresh, as a flaky node does.
FLAKY_SEED_ENV = "KILN_HWSIM_FLAKY_SEED"


class HardwareMissing(Exception):
    """No hardware profile where the tools look for it."""


@dataclass
class View:
    hw_dir: Path
    profile: dict[str, Any]  # with faults applied
    faults: list[dict[str, Any]]
    boot: dict[str, Any] = field(default_factory=dict)

    @property
    def gpus(self) -> list[dict[str, Any]]:
        """The GPUs the driver still talks to: all of them but those fallen off the bus (the
        `gpu-lost` fault). CUDA, DCGM and the burn-in tools see these."""
        lost = set(self.profile["sim"]["lost_gpus"])
        return [g for g in self.profile["gpus"] if g["index"] not in lost]

    @property
    def all_gpus(self) -> list[dict[str, Any]]:
        """Every GPU of the board, lost or not (NVML still counts a lost one)."""
        return self.profile["gpus"]

    @property
    def lost_gpus(self) -> list[dict[str, Any]]:
        lost = set(self.profile["sim"]["lost_gpus"])
        return [g for g in self.profile["gpus"] if g["index"] in lost]

    @property
    def hcas(self) -> list[dict[str, Any]]:
        return self.profile["hcas"]

    @property
    def loaded_driver(self) -> str | None:
        return self.boot.get("driver")

    @property
    def flash_dir(self) -> Path:
        return Path(os.environ.get(FLASH_DIR_ENV, DEFAULT_FLASH_DIR))

    def flaky_fails(self, tool: str) -> bool:
        """Whether this invocation of a burn-in tool fails on a flaky node."""
        p = self.profile["sim"]["flaky_p"]
        if p <= 0:
            return False
        seed = os.environ.get(FLAKY_SEED_ENV)
        rng = random.Random(f"{seed}/{tool}") if seed is not None else random.Random()
        return rng.random() < p

    def log_lines(self) -> list[tuple[float, str]]:
        """The kernel ring buffer: (seconds since boot, record), oldest first. A record may
        hold newlines (one message printed on several lines). When the buffer has wrapped
        (the `kernel-log-rotate` fault) its oldest records are gone; the rest keep their
        times."""
        lines = [(float(t), line) for t, line in self.profile["boot_log"]]
        lines += [(float(t), line) for t, line in self.boot.get("boot_log", [])]
        lines += fault_log_lines(self.profile, self.faults)
        lines.sort(key=lambda item: item[0])  # stable: a fault's lines keep their order
        return lines[self.profile["sim"]["log_drop"]:]


def hw_dir() -> Path:
    return Path(os.environ.get(HW_DIR_ENV, DEFAULT_HW_DIR))


def load_view(directory: Path | None = None) -> View:
    directory = directory or hw_dir()
    profile_path = directory / "profile.json"
    if not profile_path.exists():
        raise HardwareMissing(f"{profile_path}: no hardware profile (is this a kiln lab node?)")
    profile = read_json(profile_path)
    faults_path = directory / "faults.json"
    faults = read_json(faults_path).get("faults", []) if faults_path.exists() else []
    boot_path = directory / "boot.json"
    boot = read_json(boot_path) if boot_path.exists() else {}
    # In the node the flash spool is /run/kiln-hw-flash, the same directory as flash/ here.
    flash = Path(os.environ.get(FLASH_DIR_ENV) or directory / "flash")
    active_path = flash / MLXCONFIG_ACTIVE
    if active_path.exists():
        active = read_json(active_path)
        for hca in profile["hcas"]:
            hca["mlxconfig"].update(active.get(hca["name"], {}))
    return View(directory, apply_faults(profile, faults), faults, boot)


def installed_driver() -> str | None:
    """The driver version the driver package put on disk (None: no driver installed)."""
    path = Path(os.environ.get(DRIVER_VERSION_FILE_ENV, DEFAULT_DRIVER_VERSION_FILE))
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def driver_problem(view: View) -> tuple[str, int] | None:
    """What NVML says when the driver is not usable: (message, nvidia-smi's exit status)."""
    loaded = view.loaded_driver
    if loaded is None or not view.all_gpus:
        return (
            "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
            "Make sure that the latest NVIDIA driver is installed and running.\n",
            9,
        )
    installed = installed_driver()
    if installed is not None and installed != loaded:
        return ("Failed to initialize NVML: Driver/library version mismatch\n"
                f"NVML library version: {installed}\n", 18)
    return None


def _hangs(tool: str) -> bool:
    """Whether a `tool-hang` fault names this tool (read from faults.json alone: a hung tool
    must hang before it reads anything else)."""
    try:
        faults = read_json(hw_dir() / "faults.json").get("faults", [])
    except (OSError, ValueError):
        return False
    return any(f.get("kind") == "tool-hang" and f.get("tool") == tool for f in faults)


def run_tool(main_body: Any, argv: list[str] | None) -> int:
    """Common wrapper: a missing profile is the tool's own error, not a traceback; a tool a
    `tool-hang` fault names never returns (only a signal ends it, as `timeout` sends)."""
    tool = getattr(main_body, "__module__", "").rsplit(".", 1)[-1].replace("_", "-")
    tool = {"all-reduce-perf": "all_reduce_perf", "ib-write-bw": "ib_write_bw"}.get(tool, tool)
    if _hangs(tool):
        while True:
            time.sleep(3600)
    try:
        return main_body(sys.argv[1:] if argv is None else argv)
    except HardwareMissing as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 141

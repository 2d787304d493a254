"""The one place the node builder calls the lab's other parts.

- the simulated services around the nodes (lab/bmc, lab/maas_sim, lab/ufm_sim): each a
  package with `start(lab, state, log, ...) -> str` (a one-line summary) and `stop(lab)`,
  started after the nodes and stopped before them;

- the hardware simulator (`lab/hwsim/lab_hooks.py`): writes a node's hardware state under
  `hw/<name>/` before the node exists, and `boot.json` at each boot; `kiln lab fault`;
- the vendor repository (`lab/vendor/`): built (a no-op when nothing changed) and served
  at `http://10.231.0.1:8081/` while the lab is up.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from kiln.lab import services, vendor
from kiln.lab.hwsim import lab_hooks
from kiln.lab.hwsim.lab_hooks import NodeBootFailed
from kiln.lab.vendor import server

__all__ = ["NodeBootFailed"]


def prepare_node_hardware(
    lab: Path, node: str, index: int, role: str, faults_file: Path | None
) -> None:
    lab_hooks.prepare_node_hardware(lab, node, index, role, faults_file)


def on_node_boot(lab: Path, node: str, rootfs: Path) -> None:
    """Raises NodeBootFailed when the node's hardware does not boot (fault `boot-fail`)."""
    lab_hooks.on_node_boot(lab, node, rootfs)


def fault_command(argv: list[str]) -> int:
    """`kiln lab fault ...`."""
    return lab_hooks.fault_command(argv)


def start_vendor_repo(lab: Path, log: Callable[[str], None] = print) -> str:
    """Build what changed in the vendor repository, then serve it; say what happened."""
    vendor.build_repository(lab, log=log)
    server.start(lab)
    return "vendor repository: serving"


def stop_vendor_repo(lab: Path) -> None:
    server.stop(lab)


# Started in this order (MAAS drives the BMCs, so they come first), stopped in reverse.
SIMULATORS = ("kiln.lab.bmc", "kiln.lab.maas_sim", "kiln.lab.ufm_sim")


def _simulator(module: str) -> ModuleType | None:
    """The simulator's package, or None while it is not built (no package, or no start/stop
    yet): the lab runs without it and says so."""
    try:
        package = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        return None
    if not (callable(getattr(package, "start", None)) and callable(getattr(package, "stop", None))):
        return None
    return package


def start_simulators(lab: Path, state: object, deployed: bool, log: Callable[[str], None]) -> None:
    for module in SIMULATORS:
        simulator = _simulator(module)
        if simulator is None:
            log(f"kiln lab: {module} is not built yet; not started")
            continue
        if module == "kiln.lab.maas_sim":
            summary = simulator.start(lab, state, log, deployed=deployed)
        else:
            summary = simulator.start(lab, state, log)
        log(f"kiln lab: {summary}")


def stop_simulators(lab: Path) -> None:
    for module in reversed(SIMULATORS):
        simulator = _simulator(module)
        if simulator is not None:
            simulator.stop(lab)
    services.stop_all(lab)  # whatever a simulator left registered

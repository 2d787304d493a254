"""The one place the node builder calls the lab's other parts, when they are there.

- the hardware simulator (`lab/hwsim/lab_hooks.py`): writes a node's hardware state under
  `hw/<name>/` before the node exists, and `boot.json` at each boot; `kiln lab fault`;
- the vendor repository (`lab/vendor/server.py`): serves `http://10.231.0.1:8081/`.

Each part is optional: when its module is absent, the hook does nothing. An error *inside*
a present module is not hidden.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType


def _optional(module: str) -> ModuleType | None:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        # Only "that module is not there"; a missing import inside it is a real error.
        if exc.name and module.startswith(exc.name):
            return None
        raise


def prepare_node_hardware(
    lab: Path, node: str, index: int, role: str, faults_file: Path | None
) -> None:
    hooks = _optional("lab.hwsim.lab_hooks")
    if hooks is not None:
        hooks.prepare_node_hardware(lab, node, index, role, faults_file)


def on_node_boot(lab: Path, node: str, rootfs: Path) -> None:
    hooks = _optional("lab.hwsim.lab_hooks")
    if hooks is not None:
        hooks.on_node_boot(lab, node, rootfs)


def fault_command(argv: list[str]) -> int | None:
    """`kiln lab fault ...`, or None when the hardware simulator is not there."""
    hooks = _optional("lab.hwsim.lab_hooks")
    if hooks is None or not hasattr(hooks, "fault_command"):
        return None
    return hooks.fault_command(argv)


def start_vendor_repo(lab: Path) -> str:
    """Start serving the vendor repository; say what happened, for the log."""
    server = _optional("lab.vendor.server")
    if server is None:
        return "vendor repository: not part of this checkout"
    if not (lab / "vendor").is_dir():
        # Nodes come up without it; the vendor repository is built by its own step.
        return f"vendor repository: not started ({lab / 'vendor'} is not built)"
    server.start(lab)
    return "vendor repository: serving"


def stop_vendor_repo(lab: Path) -> None:
    server = _optional("lab.vendor.server")
    if server is not None:
        server.stop(lab)

"""Simulated `mlxfwreset` (NVIDIA MFT): `-d DEV q` and `-d DEV [-y] [-l 3] reset`.

Output as the real tool prints it. The query text follows mstflint's source of the same tool
(Mellanox/mstflint small_utils/mlxfwresetlib/cmd_reg_mfrl.py `query_text` and
cmd_reg_mcam.py `reset_sync_query_text`: "{level}: {description:<62}-{support:<14}{default}");
the reset dialogue follows a published MFT capture of `mlxfwreset -d /dev/mst/mt4129_pciconf0
reset -y` on a ConnectX-7 ("The reset level for device, DEV is:", "Continue with reset?[y/N]
y", the "-I- ... -Done" steps, "-I- FW was loaded successfully."). What a ConnectX-7 reports
for each level is modelled, not captured: level 3 (driver restart and PCI reset) supported
and the default, live-patch (0) not offered (a configuration change is not live-patchable),
warm reboot (4) supported.

`reset` does what the card's reset does to the settings the simulated mlxconfig models: every
value `mlxconfig set` left for the next boot of that card becomes current. The node cannot
write its profile (read-only at /run/kiln-hw), so the values go to the writable flash spool,
flash/mlxconfig-active.json, which the view lays over the profile and the next boot folds in
(hwsim.view, lab_hooks.on_node_boot). Images `flint` burned stay staged until a boot.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..view import MLXCONFIG_ACTIVE, View, load_view, run_tool
from ._hca import find_hca

PENDING = "mlxconfig-pending.json"

RESET_LEVELS = (  # (level, description, supported)
    (0, 'Driver, PCI link, network link will remain up ("live-Patch")', False),
    (1, 'Only ARM side will not remain up ("Immediate reset").', False),
    (3, "Driver restart and PCI reset", True),
    (4, "Warm Reboot", True),
)
DEFAULT_LEVEL = 3
RESET_TYPES = (
    (0, "Full chip reset", True),
    (1, "Phy-less reset (keep network port active during reset)", False),
    (2, "NIC only reset (for SoC devices)", False),
    (3, "ARM only reset", False),
    (4, "ARM OS shut down", False),
)
RESET_STEPS = ("Sending Reset Command To Fw", "Stopping Driver", "Resetting PCI",
               "Starting Driver", "Restarting MST")


def _row(number: int, text: str, supported: bool, default: bool) -> str:
    support = "Supported" if supported else "Not Supported"
    return f"{number}: {text:<62}-{support:<14}{'(default)' if default else ''}"


def query_text() -> str:
    lines = ["Reset-levels:"]
    lines += [_row(level, text, ok, level == DEFAULT_LEVEL) for level, text, ok in RESET_LEVELS]
    relevant = ",".join(str(level) for level, _, _ in RESET_LEVELS if level)
    lines += ["", f"Reset-types (relevant only for reset-levels {relevant}):"]
    lines += [_row(kind, text, ok, kind == 0) for kind, text, ok in RESET_TYPES]
    lines += ["", "Reset-sync (relevant only for reset-level 3):",
              _row(0, "Tool is the owner", True, True),
              _row(1, "Driver is the owner", True, False)]
    return "\n".join(lines) + "\n"


def _read(path: Path) -> dict[str, dict[str, str]]:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def _write(path: Path, data: dict[str, dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)


def reset(view: View, name: str) -> None:
    """The card's reset: its pending mlxconfig values become current."""
    pending_path = view.flash_dir / PENDING
    pending = _read(pending_path)
    taken = pending.pop(name, {})
    if not taken:
        return
    active_path = view.flash_dir / MLXCONFIG_ACTIVE
    active = _read(active_path)
    active.setdefault(name, {}).update(taken)
    _write(active_path, active)
    if pending:
        _write(pending_path, pending)
    else:
        pending_path.unlink()


def _main(argv: list[str]) -> int:
    device = None
    level = None
    yes = False
    command = None
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("-d", "--device") and i + 1 < len(args):
            device = args[i + 1]
            i += 2
            continue
        if arg in ("-l", "--level") and i + 1 < len(args):
            level = args[i + 1]
            i += 2
            continue
        if arg in ("-y", "--yes"):
            yes = True
        elif arg in ("q", "query", "r", "reset"):
            command = "query" if arg in ("q", "query") else "reset"
        else:
            sys.stderr.write(f"mlxfwreset: error: unrecognized arguments: {arg}\n")
            return 2
        i += 1
    if device is None or command is None:
        sys.stderr.write("mlxfwreset: error: the following arguments are required: "
                         "--device/-d, command\n")
        return 2
    view = load_view()
    hca = find_hca(view, device)
    if hca is None:
        sys.stdout.write(f"-E- Failed to open device: {device}\n")
        return 1
    if command == "query":
        sys.stdout.write(query_text())
        return 0
    chosen = DEFAULT_LEVEL if level is None else int(level) if level.isdigit() else -1
    levels = {number: (text, ok) for number, text, ok in RESET_LEVELS}
    if chosen not in levels or not levels[chosen][1]:
        sys.stdout.write(f"-E- Reset-level '{level}' is not supported for device {device}\n")
        return 1
    if chosen == 4:
        # A warm reboot is the machine's business (the lab's BMC), not this tool's.
        sys.stdout.write("-E- Warm reboot (level 4) is not simulated: reboot the node\n")
        return 1
    out = ["", f"The reset level for device, {device} is:", "",
           f"{chosen}: {levels[chosen][0]}"]
    if not yes:
        out.append("Continue with reset?[y/N] n")
        sys.stdout.write("\n".join(out) + "\n-E- Aborted by user\n")
        return 1
    out.append("Continue with reset?[y/N] y")
    reset(view, hca["name"])
    out += [f"-I- {step:<40}-Done" for step in RESET_STEPS]
    out.append("-I- FW was loaded successfully.")
    sys.stdout.write("\n".join(out) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_tool(_main, argv)

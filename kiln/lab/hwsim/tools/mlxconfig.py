"""Simulated `mlxconfig` (NVIDIA MFT): `-d DEV q [NAME…]`, `-d DEV [-y] set NAME=VALUE…`.

`set` writes to the node's writable flash spool (mlxconfig-pending.json); the lab applies
it at the next boot, as the card does, so `q` shows it under "Next Boot" at once and
`-e q` shows "Current" unchanged until then.

Layout as a real capture prints it (tests/fixtures/mlxconfig/mstconfig-q.connectx6.trimmed.txt,
mstflint's build of the same tool): header labels padded to 16, parameter names indented 9
and padded to 36, so each value starts in column 45 under its column title. MFT's mlxconfig
adds the card's Description line to the header, which mstconfig leaves out.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ..profile import MLXCONFIG_CHOICES, MLXCONFIG_DEFAULTS
from ..view import View, load_view, run_tool
from ._hca import device_type, find_hca

PENDING = "mlxconfig-pending.json"
ROW_INDENT = " " * 9  # a parameter row; its value starts in column 45


def _pending(view: View) -> dict[str, dict[str, str]]:
    path = view.flash_dir / PENDING
    if not path.exists():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def _header(hca: dict[str, Any], device: str) -> list[str]:
    return [
        "",
        "Device #1:",
        "----------",
        "",
        f"{'Device type:':<16}{device_type(hca)}",
        f"{'Name:':<16}{hca['part_number']}",
        f"{'Description:':<16}{hca['description']}",
        f"{'Device:':<16}{device}",
        "",
    ]


def _normalise(name: str, value: str) -> str | None:
    """A value as the card stores it (`True(1)`), or None when the card rejects it."""
    if name not in MLXCONFIG_CHOICES:
        return None
    choices = MLXCONFIG_CHOICES[name]
    if choices is None:
        return value if value.isdigit() else None
    for label, number in choices.items():
        if value.upper() in (label.upper(), str(number)):
            return f"{label}({number})"
    return None


def _main(argv: list[str]) -> int:
    args = list(argv)
    device = None
    extended = yes = False
    rest = []
    i = 0
    while i < len(args):
        if args[i] in ("-d", "--dev") and i + 1 < len(args):
            device = args[i + 1]
            i += 2
            continue
        if args[i] in ("-e", "--show_default"):
            extended = True
        elif args[i] in ("-y", "--yes"):
            yes = True
        else:
            rest.append(args[i])
        i += 1
    if device is None or not rest or rest[0] not in ("q", "query", "s", "set"):
        sys.stdout.write("-E- Please specify a device and a command (q/set); see mlxconfig -h\n")
        return 1
    view = load_view()
    hca = find_hca(view, device)
    if hca is None:
        sys.stdout.write(f"-E- Failed to open device: {device}. No such file or directory\n")
        return 1
    current = hca["mlxconfig"]
    pending = _pending(view).get(hca["name"], {})
    next_boot = {**current, **pending}
    out = _header(hca, device)
    if rest[0] in ("q", "query"):
        names = rest[1:] or list(current)
        unknown = [n for n in names if n not in current]
        if unknown:
            sys.stdout.write("\n".join(out) + f"\n-E- The Device doesn't support {unknown[0]} "
                             "parameter\n")
            return 1
        if extended:
            out.append(f"{'Configurations:':<45}{'Default':<16}{'Current':<16}Next Boot")
            for name in names:
                mark = "*" if next_boot[name] != MLXCONFIG_DEFAULTS[name] else " "
                out.append(f"{mark}{' ' * 8}{name:<36}{MLXCONFIG_DEFAULTS[name]:<15} "
                           f"{current[name]:<15} {next_boot[name]}")
            out.append("The '*' shows parameters with next value different from default/current "
                       "value.")
        else:
            out.append(f"{'Configurations:':<45}Next Boot")
            for name in names:
                out.append(f"{ROW_INDENT}{name:<36}{next_boot[name]}")
        sys.stdout.write("\n".join(out) + "\n")
        return 0
    changes = {}
    for pair in rest[1:]:
        name, sep, value = pair.partition("=")
        if not sep or name not in current:
            sys.stdout.write("\n".join(out) + f"\n-E- The Device doesn't support {name} "
                             "parameter\n")
            return 1
        stored = _normalise(name, value)
        if stored is None:
            sys.stdout.write("\n".join(out) + f"\n-E- Bad parameter value for {name}: {value}\n")
            return 1
        changes[name] = stored
    out.append(f"{'Configurations:':<45}{'Next Boot':<16}New")
    for name, stored in changes.items():
        out.append(f"{ROW_INDENT}{name:<36}{next_boot[name]:<15} {stored}")
    out.append("")
    if not yes:
        out.append(" Apply new Configuration? (y/n) [n] : n")
        sys.stdout.write("\n".join(out) + "\n-I- Aborted by user\n")
        return 1
    out.append(" Apply new Configuration? (y/n) [n] : y")
    out.append("Applying... Done!")
    out.append("-I- Please reboot machine to load new configurations.")
    all_pending = _pending(view)
    all_pending.setdefault(hca["name"], {}).update(changes)
    path: Path = view.flash_dir / PENDING
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(PENDING + ".tmp")
    tmp.write_text(json.dumps(all_pending, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)
    sys.stdout.write("\n".join(out) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_tool(_main, argv)

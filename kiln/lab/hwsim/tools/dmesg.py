"""Simulated `dmesg`: the node's boot log, plus the lines its faults add (Xid, SXid …).

Prints `[seconds.micros] line` like util-linux dmesg; `-T` prints wall-clock times from
the boot time recorded in boot.json.
"""

from __future__ import annotations

import sys
import time

from ..view import load_view, run_tool


def _main(argv: list[str]) -> int:
    view = load_view()
    human = "-T" in argv or "--ctime" in argv
    booted = float(view.boot.get("booted_at", time.time() - 3600))
    out = []
    for seconds, line in view.log_lines():
        if human:
            stamp = time.strftime("%a %b %d %H:%M:%S %Y", time.localtime(booted + seconds))
        else:
            whole = int(seconds)
            stamp = f"{whole:5d}.{int(round((seconds - whole) * 1e6)):06d}"
        out.append(f"[{stamp}] {line}")
    sys.stdout.write("\n".join(out) + ("\n" if out else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_tool(_main, argv)

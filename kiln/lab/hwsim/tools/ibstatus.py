"""Simulated `ibstatus` (infiniband-diags' script over /sys/class/infiniband)."""

from __future__ import annotations

import sys

from ..view import load_view, run_tool
from ._hca import PHYS_STATES, PORT_STATES, RATE_NAMES, default_gid


def _main(argv: list[str]) -> int:
    view = load_view()
    names = [a for a in argv if not a.startswith("-")]
    out = []
    for hca in sorted(view.hcas, key=lambda h: h["name"]):
        if names and hca["name"] not in names:
            continue
        for port in hca["ports"]:
            out += [
                f"Infiniband device '{hca['name']}' port {port['port']} status:",
                f"\tdefault gid:\t {default_gid(port['port_guid'])}",
                f"\tbase lid:\t 0x{port['lid']:x}",
                f"\tsm lid:\t\t 0x{port['sm_lid']:x}",
                f"\tstate:\t\t {PORT_STATES[port['state']]}: {port['state'].upper()}",
                f"\tphys state:\t {PHYS_STATES[port['phys_state']]}: {port['phys_state']}",
                f"\trate:\t\t {RATE_NAMES.get(port['rate'], str(port['rate']) + ' Gb/sec')}",
                f"\tlink_layer:\t {port['link_layer']}",
                "",
            ]
    sys.stdout.write("\n".join(out) + ("\n" if out else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_tool(_main, argv)

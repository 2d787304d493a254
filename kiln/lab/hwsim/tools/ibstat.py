"""Simulated `ibstat` (infiniband-diags): every CA, or the CAs named on the command line."""

from __future__ import annotations

import sys
from typing import Any

from ..view import load_view, run_tool


def ca_block(hca: dict[str, Any]) -> str:
    lines = [
        f"CA '{hca['name']}'",
        f"\tCA type: {hca['ca_type']}",
        f"\tNumber of ports: {len(hca['ports'])}",
        f"\tFirmware version: {hca['fw_version']}",
        "\tHardware version: 0",
        f"\tNode GUID: {hca['node_guid']}",
        f"\tSystem image GUID: {hca['sys_image_guid']}",
    ]
    for port in hca["ports"]:
        lines += [
            f"\tPort {port['port']}:",
            f"\t\tState: {port['state']}",
            f"\t\tPhysical state: {port['phys_state']}",
            f"\t\tRate: {port['rate']}",
            f"\t\tBase lid: {port['lid']}",
            f"\t\tLMC: {port['lmc']}",
            f"\t\tSM lid: {port['sm_lid']}",
            f"\t\tCapability mask: {port['capability_mask']}",
            f"\t\tPort GUID: {port['port_guid']}",
            f"\t\tLink layer: {port['link_layer']}",
        ]
    return "\n".join(lines) + "\n"


def _main(argv: list[str]) -> int:
    view = load_view()
    names = [a for a in argv if not a.startswith("-")]
    if "-l" in argv or "--list_of_cas" in argv:
        sys.stdout.write("".join(f"{h['name']}\n" for h in view.hcas))
        return 0
    hcas = view.hcas
    if names:
        hcas = [h for h in view.hcas if h["name"] == names[0]]
        if not hcas:
            sys.stderr.write(f"ibpanic: [{12345}] main: stat of IB device '{names[0]}' failed: "
                             "No such file or directory\n")
            return 255
    # real ibstat sorts CAs by name as strings (mlx5_10 before mlx5_2)
    sys.stdout.write("".join(ca_block(h) for h in sorted(hcas, key=lambda h: h["name"])))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_tool(_main, argv)

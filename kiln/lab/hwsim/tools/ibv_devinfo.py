"""Simulated `ibv_devinfo` (rdma-core's ibverbs-utils)."""

from __future__ import annotations

import sys

from ..view import load_view, run_tool
from ._hca import PORT_STATES, guid_colons


def _main(argv: list[str]) -> int:
    view = load_view()
    hcas = sorted(view.hcas, key=lambda h: h["name"])
    if "-l" in argv or "--list" in argv:
        sys.stdout.write(f"{len(hcas)} HCA{'s' if len(hcas) != 1 else ''} found:\n")
        sys.stdout.write("".join(f"\t{h['name']}\n" for h in hcas))
        return 0
    for flag in ("-d", "--ib-dev"):
        if flag in argv:
            i = argv.index(flag)
            name = argv[i + 1] if i + 1 < len(argv) else ""
            hcas = [h for h in hcas if h["name"] == name]
            if not hcas:
                sys.stderr.write(f"IB device '{name}' wasn't found\n")
                return 255
    if not hcas:
        sys.stderr.write("No IB devices found\n")
        return 255
    out = []
    for hca in hcas:
        out += [
            f"hca_id:\t{hca['name']}",
            "\ttransport:\t\t\tInfiniBand (0)",
            f"\tfw_ver:\t\t\t\t{hca['fw_version']}",
            f"\tnode_guid:\t\t\t{guid_colons(hca['node_guid'])}",
            f"\tsys_image_guid:\t\t\t{guid_colons(hca['sys_image_guid'])}",
            "\tvendor_id:\t\t\t0x02c9",
            f"\tvendor_part_id:\t\t\t{hca['ca_type'][2:]}",
            "\thw_ver:\t\t\t\t0x0",
            f"\tboard_id:\t\t\t{hca['psid']}",
            f"\tphys_port_cnt:\t\t\t{len(hca['ports'])}",
        ]
        for port in hca["ports"]:
            state = port["state"].upper()
            out += [
                f"\t\tport:\t{port['port']}",
                f"\t\t\tstate:\t\t\tPORT_{state} ({PORT_STATES[port['state']]})",
                "\t\t\tmax_mtu:\t\t4096 (5)",
                "\t\t\tactive_mtu:\t\t4096 (5)",
                f"\t\t\tsm_lid:\t\t\t{port['sm_lid']}",
                f"\t\t\tport_lid:\t\t{port['lid']}",
                f"\t\t\tport_lmc:\t\t0x{port['lmc']:02x}",
                f"\t\t\tlink_layer:\t\t{port['link_layer']}",
                "",
            ]
    sys.stdout.write("\n".join(out) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_tool(_main, argv)

"""`kiln lab up|status|down` and `kiln lab fault` (the lab's host-side faults, lab/hostfaults.py,
and the hardware simulator's)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from kiln.lab.host import LabError
from kiln.lab.state import LabState, StateError, load_state


def cmd_up(args: argparse.Namespace) -> int:
    from kiln.lab.cluster import up

    faults = Path(args.faults) if args.faults else None
    state = up(args.nodes, args.service_nodes, faults, deployed=args.deployed)
    print_table(state)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from kiln.lab.cluster import down

    down()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    try:
        state = load_state()
    except StateError as exc:
        if args.json:
            print(f"kiln lab: {exc}", file=sys.stderr)
            return 1
        print(f"kiln lab: not up ({exc})")
        return 1
    from kiln.lab.nodes import Node

    # The file says what was started; the process table says what still runs.
    for node in state.nodes:
        if node.state == "running" and not Node(Path(state.lab_dir), node).running():
            node.state = "off"
    if args.json:
        document = json.loads(state.to_json())
        document["services"] = service_states(Path(state.lab_dir))
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
    else:
        print_table(state)
    return 0


def service_states(lab: Path) -> dict[str, str]:
    """Every host-side lab service (BMCs, MAAS, UFM): "running" or "dead"."""
    from kiln.lab import services

    names = sorted(f.stem for f in services.services_dir(lab).glob("*.pid"))
    return {name: "running" if services.running(lab, name) else "dead" for name in names}


def print_table(state: LabState) -> None:
    from kiln.lab.nodes import ssh_banner

    print(f"{'NODE':<10} {'ROLE':<8} {'ADDRESS':<12} {'POWER':<6} {'DISK':<10} {'SSH':<4} BMC")
    for node in state.nodes:
        power = "on" if node.state == "running" else "off"
        ssh = "up" if power == "on" and ssh_banner(node.address, node.ssh_port) else "-"
        bmc = f"{node.bmc.get('protocol', '?')} {node.bmc.get('address', '?')}"
        print(f"{node.name:<10} {node.role:<8} {node.address:<12} {power:<6} {node.disk:<10} "
              f"{ssh:<4} {bmc}")
    for name, url in state.endpoints.items():
        print(f"{name}: {url}")
    for name, status in service_states(Path(state.lab_dir)).items():
        print(f"service {name}: {status}")
    print(f"ssh key: {state.ssh_key}")
    if state.secrets_file:
        print(f"credentials: {state.secrets_file} (0600)")
    if state.tls_ca:
        print(f"lab CA: {state.tls_ca}")


def cmd_fault(args: argparse.Namespace) -> int:
    from kiln.lab import hostfaults
    from kiln.lab.integrations import fault_command

    argv = list(args.fault_args)
    # The lab's host-side faults (lab/hostfaults.py: network, BMC event log) first; every
    # other kind is the hardware simulator's (lab/hwsim/faults.py).
    if hostfaults.handles(argv):
        return hostfaults.fault_command(argv)
    if not argv or argv[0] in ("-h", "--help", "--list"):
        status = fault_command(argv)
        print(hostfaults.kinds_text(), end="", file=sys.stdout if argv else sys.stderr)
        return status
    if argv[1:] == ["--clear"]:
        status = hostfaults.fault_command(argv)
        if status != 0:
            return status
    status = fault_command(argv)
    node = argv[0]
    if status == 0 and not node.startswith("-"):
        # A port's state is also its rail interface's link (lab/rails.py).
        from kiln.lab.cluster import sync_rail_links

        sync_rail_links(node)
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kiln lab", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="build and start the lab's nodes")
    up.add_argument("--nodes", type=int, default=4, metavar="N", help="GPU nodes (default 4)")
    up.add_argument(
        "--service-nodes", type=int, default=1, metavar="M", help="service nodes (default 1)"
    )
    up.add_argument("--faults", metavar="FILE", help="YAML file of simulated hardware faults")
    up.add_argument(
        "--deployed",
        action="store_true",
        help="start every node already deployed and running (default: New in MAAS, off)",
    )
    up.set_defaults(func=cmd_up)
    status = commands.add_parser("status", help="the lab's nodes and endpoints")
    status.add_argument("--json", action="store_true", help="print state.json")
    status.set_defaults(func=cmd_status)
    down = commands.add_parser("down", help="stop everything; leaves nothing running")
    down.set_defaults(func=cmd_down)
    fault = commands.add_parser("fault", help="inject a simulated fault at run time")
    fault.add_argument("fault_args", nargs=argparse.REMAINDER)
    fault.set_defaults(func=cmd_fault)
    return parser


def run(argv: Sequence[str]) -> int:
    argv = list(argv)
    if argv[:1] == ["fault"]:
        # Its options (--list, --clear) belong to the simulator, not to argparse here.
        args = argparse.Namespace(func=cmd_fault, fault_args=argv[1:])
    else:
        args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (LabError, StateError, ValueError) as exc:
        print(f"kiln lab: {exc}", file=sys.stderr)
        return 1


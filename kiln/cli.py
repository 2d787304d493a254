"""`kiln`: the command line beside the pyinfra deploys.

    kiln check FILE…          validate manifests (firmware/*.yaml) and inventories
    kiln parse TOOL FILE      parse a captured tool output (nvidia-smi -q, ibstat …) to JSON
    kiln health NODE          the node's health results from the ledger, as a table
    kiln nodes [NODE]         every node's state, reason, last busbw and last run; or one
                              node's history
    kiln dmesg learn NODE     add the boot-log lines a person accepts to the site allowlist
    kiln lab up|down|status   the simulated cluster (lab/)
    kiln demo                 start the lab and run bring-up on it

The deploys themselves run with pyinfra: `pyinfra -y inventory/prod.py deploy/bringup.py`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from kiln.core.errors import KilnError, ValidationFailed
from kiln.core.paths import FIRMWARE_DIR
from kiln.core.yamlfile import read_yaml_mapping


def _file_kind(path: Path) -> str:
    """A manifest has `sku:` at the top; an inventory has `racks:`."""
    document = read_yaml_mapping(path)
    if "sku" in document:
        return "manifest"
    if "racks" in document:
        return "inventory"
    raise ValidationFailed(
        [f"{path}: neither a manifest (no 'sku' key) nor an inventory (no 'racks' key)"]
    )


def check_file(path: Path, firmware_dir: Path) -> list[str]:
    """Every problem in one file, or an empty list when it is valid."""
    from kiln.core.inventory import load_cluster
    from kiln.core.manifest import load_manifest

    try:
        if _file_kind(path) == "manifest":
            load_manifest(path)
        else:
            load_cluster(path, firmware_dir)
    except ValidationFailed as exc:
        return exc.problems
    return []


def cmd_check(args: argparse.Namespace) -> int:
    failed = 0
    for name in args.files:
        path = Path(name)
        firmware_dir = Path(args.firmware_dir) if args.firmware_dir else FIRMWARE_DIR
        problems = check_file(path, firmware_dir)
        if problems:
            failed += 1
            for problem in problems:
                print(problem, file=sys.stderr)
        else:
            print(f"{path}: ok")
    return 1 if failed else 0


def cmd_parse(args: argparse.Namespace) -> int:
    from kiln.parse import parse_file

    print(parse_file(args.tool, Path(args.file)))
    return 0


def cmd_mirror_init_key(args: argparse.Namespace) -> int:
    from kiln.roles.mirror.signing import init_key

    state = Path(args.state).expanduser()
    fingerprint, made = init_key(state)
    print(f"{'made' if made else 'kept'} the cluster's mirror signing key {fingerprint} "
          f"in {state} (public half: {state / 'mirror-key.asc'})")
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    import json

    from kiln.roles.health.report import as_json, health_rows, render

    rows = health_rows(args.ledger, args.node)
    if not rows:
        print(f"kiln: no health results for node {args.node} in {args.ledger} (has the "
              "health stage or deploy/health.py run on it?)", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(as_json(rows), indent=1))
    else:
        print(render(rows, args.node, only_problems=args.problems), end="")
    return 2 if any(not r.status.passes for r in rows) else 0


def cmd_nodes(args: argparse.Namespace) -> int:
    import json

    from kiln.core.ledger import node_history, node_overview
    from kiln.roles.gate import record

    if args.node:
        rows = node_history(args.ledger, args.node)
        if not rows:
            print(f"kiln: node {args.node} is not in the ledger {args.ledger}", file=sys.stderr)
            return 1
        print(json.dumps(record.history_json(rows), indent=1) if args.json
              else record.render_history(rows, args.node), end="\n" if args.json else "")
        return 0
    fleet = node_overview(args.ledger)
    if not fleet:
        print(f"kiln: no nodes in the ledger {args.ledger} (has a deploy run with -y?)",
              file=sys.stderr)
        return 1
    print(json.dumps(record.fleet_json(fleet), indent=1) if args.json
          else record.render_fleet(fleet), end="\n" if args.json else "")
    return 0


def cmd_dmesg_learn(args: argparse.Namespace) -> int:
    """Show the unknown lines of the node's last boot-log result (the ledger), ask about each
    (or take all with --accept-all), append the accepted ones to the site allowlist."""
    import time

    from kiln.core.ledger import last_recorded
    from kiln.roles.health import bootlog

    node, site = args.node, Path(args.allowlist)
    recorded = last_recorded(args.ledger, node, bootlog.BOOT_LOG, subject="node")
    if recorded is None:
        raise KilnError(f"node {node}: no {bootlog.BOOT_LOG} result in the ledger {args.ledger} "
                        "(has the health check run on it?)")
    allowlist = bootlog.load_allowlist(site=site)  # refuses a site file with a catch-all
    lines = [u for u in bootlog.unknown_lines(recorded.evidence)
             if not allowlist.accepts(u["pattern"])]
    seen = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(recorded.at))
    if not lines:
        print(f"node {node}: nothing to learn: every line its boot-log check of {seen} did not "
              f"know is in an allowlist now ({', '.join(allowlist.sources)})")
        return 0
    interactive = sys.stdin.isatty()
    if not (args.accept_all or interactive):
        raise KilnError(f"node {node}: {len(lines)} unknown boot-log line(s), and no terminal to "
                        "ask about each: run it on a terminal, or pass --accept-all to accept "
                        f"every one; nothing written to {site}")

    def yes(question: str) -> bool:
        try:
            return input(question).strip().lower() in ("y", "yes")
        except EOFError:
            return False

    accepted = []
    print(f"node {node}: {len(lines)} kernel log line(s) in no allowlist (boot-log check of "
          f"{seen}):")
    for number, line in enumerate(lines, start=1):
        print(f"[{number}/{len(lines)}] seen {line.get('count', 1)}x\n  pattern: "
              f"{line['pattern']}\n  example: {line.get('example', '')}")
        if args.accept_all or yes("  accept it as benign? [y/N] "):
            accepted.append(line)
    if not accepted or (interactive and not args.yes and not yes(
            f"add {len(accepted)} entr{'y' if len(accepted) == 1 else 'ies'} to {site}? [y/N] ")):
        print(f"nothing written; {site} unchanged")
        return 0
    now = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    added, refused = bootlog.add_to_allowlist(
        site, accepted, f"kiln dmesg learn {node}, {now}: accepted from its boot-log check "
        f"of {seen}")
    for problem in refused:
        print(f"kiln: refused: {problem}", file=sys.stderr)
    print(f"added {len(added)} entr{'y' if len(added) == 1 else 'ies'} to {site}"
          + "".join(f"\n  {pattern}" for pattern in added))
    return 1 if refused else 0


def cmd_burnin_init_key(args: argparse.Namespace) -> int:
    from kiln.roles.burnin.access import init_key

    path, made = init_key(Path(args.state).expanduser())
    print(f"{'made' if made else 'kept'} the burn-in SSH key {path} (public half: "
          f"{path.with_suffix('.pub')})")
    return 0


def cmd_lab(args: argparse.Namespace) -> int:
    # Imported here: only `kiln lab` and `kiln demo` load the lab, whose simulators need the
    # kiln[lab] extra (flask, sushy-tools) that a production controller does not install.
    from kiln.lab.cli import run as lab_run

    return lab_run(args.lab_args)


def cmd_demo(args: argparse.Namespace) -> int:
    from kiln.lab.demo import run as demo_run  # the lab, as in cmd_lab

    return demo_run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kiln", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    check = commands.add_parser("check", help="validate manifests and inventory files")
    check.add_argument("files", nargs="+", metavar="FILE")
    check.add_argument(
        "--firmware-dir", help="where <sku>.yaml manifests live (default: firmware/)"
    )
    check.set_defaults(func=cmd_check)

    parse = commands.add_parser("parse", help="parse a captured tool output into JSON")
    parse.add_argument("tool", metavar="TOOL")
    parse.add_argument("file", metavar="FILE")
    parse.set_defaults(func=cmd_parse)

    mirror = commands.add_parser("mirror", help="the local file mirror's controller side")
    mirror_commands = mirror.add_subparsers(dest="mirror_command", required=True)
    init_key = mirror_commands.add_parser(
        "init-key", help="make the cluster's mirror signing key once (kept if it exists)")
    init_key.add_argument("--state", default="state/mirror",
                          help="the controller's mirror state: group data kiln_mirror_state "
                               "(default: state/mirror)")
    init_key.set_defaults(func=cmd_mirror_init_key)

    health = commands.add_parser("health", help="a node's health results, as the ledger "
                                                "holds them")
    health.add_argument("node", metavar="NODE")
    health.add_argument("--ledger", default="state/kiln.db",
                        help="the ledger (group data kiln_ledger; default: state/kiln.db)")
    health.add_argument("--json", action="store_true", help="print JSON, not a table")
    health.add_argument("--problems", action="store_true", help="only what is not OK")
    health.set_defaults(func=cmd_health)

    nodes = commands.add_parser("nodes", help="every node as the ledger holds it, or one "
                                              "node's history")
    nodes.add_argument("node", metavar="NODE", nargs="?")
    nodes.add_argument("--ledger", default="state/kiln.db",
                       help="the ledger (group data kiln_ledger; default: state/kiln.db)")
    nodes.add_argument("--json", action="store_true", help="print JSON, not a table")
    nodes.set_defaults(func=cmd_nodes)

    dmesg = commands.add_parser("dmesg", help="the boot-log check's allowlist")
    dmesg_commands = dmesg.add_subparsers(dest="dmesg_command", required=True)
    learn = dmesg_commands.add_parser(
        "learn", help="show the unknown lines of a node's last boot-log check and add the "
                      "ones you accept to the site allowlist")
    learn.add_argument("node", metavar="NODE")
    learn.add_argument("--ledger", default="state/kiln.db",
                       help="the ledger (group data kiln_ledger; default: state/kiln.db)")
    learn.add_argument("--allowlist", default="inventory/bootlog-allowlist.txt",
                       help="the site allowlist to add to (group data kiln_bootlog_allowlist; "
                            "default: inventory/bootlog-allowlist.txt, beside the inventory)")
    learn.add_argument("--accept-all", action="store_true",
                       help="accept every unknown line without asking (needed without a "
                            "terminal)")
    learn.add_argument("--yes", action="store_true",
                       help="do not ask before writing the allowlist")
    learn.set_defaults(func=cmd_dmesg_learn)

    burnin = commands.add_parser("burnin", help="the burn-in's controller side")
    burnin_commands = burnin.add_subparsers(dest="burnin_command", required=True)
    burnin_key = burnin_commands.add_parser(
        "init-key", help="make the burn-in's SSH key once (kept if it exists)")
    burnin_key.add_argument("--state", default="state/burnin",
                            help="group data kiln_burnin_state (default: state/burnin)")
    burnin_key.set_defaults(func=cmd_burnin_init_key)

    lab = commands.add_parser("lab", help="the simulated cluster: up, down, status, fault")
    lab.add_argument("lab_args", nargs=argparse.REMAINDER)
    lab.set_defaults(func=cmd_lab)

    demo = commands.add_parser("demo", help="start the lab and run bring-up on it")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValidationFailed as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    except KilnError as exc:
        print(f"kiln: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""`kiln`: the command line beside the pyinfra deploys.

    kiln check FILE…          validate manifests (firmware/*.yaml) and inventories
    kiln parse TOOL FILE      parse a captured tool output (nvidia-smi -q, ibstat …) to JSON
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

"""`python -m lab.maas_sim --lab DIR`: run the MAAS simulator service in the foreground.

With no store yet in `<lab>/maas/`, or with `--enlist new|deployed`, it enlists the nodes of
`<lab>/state.json` first; otherwise it carries on with the machines it has. Timing options
are in seconds (lifecycle.Timing).
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from kiln.lab.maas_sim import PORT, write_fresh_store
from kiln.lab.maas_sim.enlist import lab_image
from kiln.lab.maas_sim.lifecycle import Timing
from kiln.lab.maas_sim.server import build_simulator, serve
from kiln.lab.maas_sim.store import store_path
from kiln.lab.state import GATEWAY, load_state


def parse_args(argv: list[str]) -> argparse.Namespace:
    defaults = Timing()
    parser = argparse.ArgumentParser(prog="python -m lab.maas_sim",
                                     description="The lab's MAAS API 2.0 simulator.")
    parser.add_argument("--lab", type=Path, required=True, help="the lab directory")
    parser.add_argument("--listen", default=GATEWAY, help=f"address (default {GATEWAY})")
    parser.add_argument("--port", type=int, default=PORT, help=f"port (default {PORT})")
    parser.add_argument("--enlist", choices=("new", "deployed"),
                        help="enlist the lab's nodes afresh (default: keep the store)")
    parser.add_argument("--step", type=float, default=defaults.step,
                        help="seconds between the status messages of a transition")
    parser.add_argument("--poll", type=float, default=defaults.poll)
    parser.add_argument("--commission-timeout", type=float,
                        default=defaults.commission_timeout)
    parser.add_argument("--deploy-timeout", type=float, default=defaults.deploy_timeout)
    parser.add_argument("--release-timeout", type=float, default=defaults.release_timeout)
    parser.add_argument("--power-waits", type=_seconds_list, default=defaults.power_waits,
                        help="pauses between tries of a power change, e.g. 1,2,2,4")
    parser.add_argument("--ipmi-retries", type=int, choices=range(1, 11), metavar="1-10",
                        default=defaults.ipmi_retries,
                        help=f"ipmitool -R for each IPMI command (default "
                             f"{defaults.ipmi_retries})")
    return parser.parse_args(argv)


def _seconds_list(text: str) -> tuple[float, ...]:
    try:
        waits = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of seconds"
                                         ) from None
    if not waits or any(w < 0 for w in waits):
        raise argparse.ArgumentTypeError(f"{text!r}: at least one pause, none negative")
    return waits


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    lab = args.lab
    if args.enlist or not store_path(lab).exists():
        write_fresh_store(lab, load_state(lab), deployed=args.enlist == "deployed")
    timing = Timing(step=args.step, poll=args.poll,
                    commission_timeout=args.commission_timeout,
                    deploy_timeout=args.deploy_timeout,
                    release_timeout=args.release_timeout, power_waits=args.power_waits,
                    ipmi_retries=args.ipmi_retries)

    def log(line: str) -> None:
        print(f"maas-sim: {line}", file=sys.stderr, flush=True)

    simulator = build_simulator(lab, timing, lab_image(), log=log)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    log(f"serving http://{args.listen}:{args.port}/MAAS/ for {lab}")
    serve(simulator, args.listen, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m lab.ufm_sim --lab DIR [--cert PEM --key PEM]`: serve the UFM simulator.

HTTPS on 10.231.0.1:8443 by default (the lab's UFM endpoint); credentials from the lab's
secrets file, read once at start (a new `kiln lab up` makes new ones and restarts this).
Without --cert/--key it serves the certificate `lab.ufm_sim.start` issued.
"""

from __future__ import annotations

import argparse
import signal
import ssl
import sys
import threading
from pathlib import Path

from werkzeug.serving import WSGIRequestHandler, make_server

from . import ADDRESS, PORT, cert_paths
from .app import create_app

SWEEP_SECONDS = 2.0


class _PlainRequestLog(WSGIRequestHandler):
    """One plain line per request in the service log (werkzeug's own adds ANSI colours)."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.log("info", '"%s" %s %s', self.requestline, code, size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.ufm_sim", description=__doc__)
    parser.add_argument("--lab", type=Path, required=True, help="the lab directory")
    parser.add_argument("--address", default=ADDRESS)
    parser.add_argument("--port", type=int, default=PORT)
    parser.add_argument("--cert", type=Path)
    parser.add_argument("--key", type=Path)
    args = parser.parse_args(argv)

    from kiln.lab.credentials import read_lab_secrets

    try:
        ufm = read_lab_secrets(args.lab)["ufm"]
        username, password = ufm["username"], ufm["password"]
    except (OSError, ValueError, KeyError) as exc:
        print(f"ufm simulator: no UFM credentials in the lab's secrets file: {exc}",
              file=sys.stderr)
        return 2
    default_cert, default_key = cert_paths(args.lab)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(args.cert or default_cert, args.key or default_key)

    app = create_app(args.lab, username, password)
    server = make_server(args.address, args.port, app, threaded=True, ssl_context=context,
                         request_handler=_PlainRequestLog)
    stop = threading.Event()
    sweeper = threading.Thread(
        target=app.config["UFM_SIMULATOR"].sweep_forever, args=(SWEEP_SECONDS, stop),
        name="ufm-sweep", daemon=True,
    )
    # The fabric as it is at start is the baseline the first events are measured from.
    app.config["UFM_SIMULATOR"].fabric()
    sweeper.start()
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"ufm simulator: serving https://{args.address}:{args.port}/ufmRest for {args.lab}",
          flush=True)
    try:
        server.serve_forever()
    finally:
        stop.set()
    return 0


if __name__ == "__main__":
    sys.exit(main())

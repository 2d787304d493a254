"""A lab node's Redfish BMC: `python -m lab.bmc.redfish --lab DIR --node NAME --config FILE`.

Runs sushy-tools' own emulator (`sushy_tools.emulator.main`: its argument parsing, its
configuration file, its TLS context, its Flask server) with the lab's systems driver plugged
in (lab/bmc/redfish_app.py). FILE is a sushy-tools configuration file (`write_config`):
listen address and port, TLS certificate and key, the htpasswd file for basic auth, the
state directory, and the one system, the node.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

import bcrypt

from kiln.lab.bmc.redfish_driver import lab_system

UPDATE_SECONDS = 3.0


def write_htpasswd(path: Path, username: str, password: str) -> Path:
    """The basic-auth user file sushy-tools checks (Apache htpasswd, bcrypt only); 0600.

    bcrypt's lowest cost: sushy-tools checks the password on every request (it has no
    sessions), and the lab's BMCs run on the controller's own cores. At cost 10 each request
    took about 70 ms of the controller's CPU, work a real BMC does on its own processor,
    which made every Redfish read in the lab (the audit's, the firmware stage's) wait on it."""
    digest = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(f"{username}:{digest}\n")
    os.replace(tmp, path)
    return path


def write_config(
    path: Path,
    *,
    lab: Path,
    node: str,
    address: str,
    port: int,
    host_address: str,
    cert: Path,
    key: Path,
    auth_file: Path,
    state_dir: Path,
) -> Path:
    """sushy-tools' configuration (a Python file of SUSHY_EMULATOR_* settings) for a node:
    its BMC listens on `address`:`port`, the node's own NIC has `host_address`."""
    settings: dict[str, Any] = {
        "SUSHY_EMULATOR_LISTEN_IP": address,
        "SUSHY_EMULATOR_LISTEN_PORT": port,
        "SUSHY_EMULATOR_SSL_CERT": str(cert),
        "SUSHY_EMULATOR_SSL_KEY": str(key),
        "SUSHY_EMULATOR_AUTH_FILE": str(auth_file),
        "SUSHY_EMULATOR_STATE_DIR": str(state_dir),
        "SUSHY_EMULATOR_FEATURE_SET": "full",
        "SUSHY_EMULATOR_FAKE_SYSTEMS": [lab_system(lab, node, host_address)],
    }
    lines = [f"# sushy-tools configuration of the lab BMC of {node} (lab/bmc/redfish.py)\n"]
    lines += [f"{name} = {value!r}\n" for name, value in settings.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines))
    return path


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lab.bmc.redfish",
                                     description="a lab node's Redfish BMC (sushy-tools)")
    parser.add_argument("--lab", type=Path, required=True, help="the lab directory")
    parser.add_argument("--node", required=True, help="the lab node behind this BMC")
    parser.add_argument("--config", type=Path, required=True,
                        help="sushy-tools configuration file (lab.bmc.redfish.write_config)")
    parser.add_argument("--update-seconds", type=float, default=UPDATE_SECONDS,
                        help="how long a SimpleUpdate takes to write flash")
    parser.add_argument("--ca", type=Path, help="CA bundle for https:// image URIs")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if not args.config.is_file():
        print(f"lab BMC {args.node}: no configuration file {args.config}", file=sys.stderr)
        return 2
    # lab.cluster finds the lab through the environment.
    os.environ["KILN_LAB_DIR"] = str(args.lab)
    # Imported here: `kiln lab` commands import this module for write_config, not Flask.
    from sushy_tools.emulator import main as emulator

    from kiln.lab import cluster
    from kiln.lab.bmc.redfish_app import UpdateSettings, fetch_over_http, install
    from kiln.lab.bmc.redfish_driver import LabSystemsDriver

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    # Plain request lines in the service log: werkzeug colours them unless told not to, and
    # sushy-tools' main() starts werkzeug itself (no request handler to pass).
    import werkzeug.serving

    werkzeug.serving._log_add_style = False
    app = emulator.app
    app.configure(config_file=str(args.config))
    driver = LabSystemsDriver(app.config, app.logger, args.lab, args.node, power=cluster)
    install(driver, UpdateSettings(fetch_over_http(str(args.ca) if args.ca else None),
                                   args.update_seconds))
    sys.argv = ["sushy-emulator", "--config", str(args.config)]
    return emulator.main()


if __name__ == "__main__":
    sys.exit(main())

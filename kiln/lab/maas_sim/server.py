"""Putting the simulator together for a lab: its store, credentials, BMC drivers, PXE side."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from werkzeug.serving import WSGIRequestHandler, make_server

from kiln.lab import netboot as lab_netboot
from kiln.lab.credentials import read_lab_secrets, secrets_path
from kiln.lab.maas_sim.api import Simulator, create_app
from kiln.lab.maas_sim.auth import ApiKey, OAuthChecker
from kiln.lab.maas_sim.lifecycle import Image, Lifecycle, Netboot, Timing
from kiln.lab.maas_sim.machines import Machine
from kiln.lab.maas_sim.power import PowerDriver, PowerFatalError, bmc_credentials, driver_for
from kiln.lab.maas_sim.store import Store, maas_dir, store_path
from kiln.lab.state import StateError, load_state

Log = Callable[[str], None]


def lab_power(lab: Path, ipmi_retries: int = 3) -> Callable[[Machine], PowerDriver]:
    """Drivers for the lab's BMCs: credentials and CA read at each action, as `lab up`
    renews them; `ipmi_retries` is ipmitool's -R (Timing.ipmi_retries)."""

    def make(machine: Machine) -> PowerDriver:
        try:
            credentials = bmc_credentials(read_lab_secrets(lab), str(secrets_path(lab)))
            ca_bundle = load_state(lab).tls_ca
        except (OSError, ValueError, StateError) as exc:
            raise PowerFatalError(f"{machine.hostname}: no power credentials: {exc}") from None
        return driver_for(machine.power_type, machine.power_address, machine.power_port,
                          credentials, ca_bundle, ipmi_retries=ipmi_retries)

    return make


def api_key(lab: Path) -> ApiKey:
    source = str(secrets_path(lab))
    entry = read_lab_secrets(lab).get("maas") or {}
    if "api_key" not in entry:
        raise ValueError(f"{source}: no maas.api_key entry")
    return ApiKey.parse(entry["api_key"], source)


def build_simulator(
    lab: Path,
    timing: Timing,
    image: Image,
    power: Callable[[Machine], PowerDriver] | None = None,
    netboot: Netboot = lab_netboot,
    log: Log = print,
    record: bool = True,
) -> Simulator:
    lab = Path(lab)
    store = Store.load(store_path(lab))
    power = power or lab_power(lab, timing.ipmi_retries)
    lifecycle = Lifecycle(lab, store, netboot, power, image, timing, log)
    requests_log = maas_dir(lab) / "requests.jsonl" if record else None
    return Simulator(lifecycle, OAuthChecker(api_key(lab)), requests_log)


class _PlainRequestLine(WSGIRequestHandler):
    """The request line and status, uncoloured: the service log is a file, not a terminal."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.log("info", '"%s" %s %s', self.requestline, code, size)


def serve(simulator: Simulator, host: str, port: int, ready: threading.Event | None = None,
          ) -> None:
    server = make_server(host, port, create_app(simulator), threaded=True,
                         request_handler=_PlainRequestLine)
    simulator.lifecycle.resume()
    if ready is not None:
        ready.set()
    server.serve_forever()

"""UFM simulator: NVIDIA UFM Enterprise's REST API over the lab's simulated InfiniBand fabric.

UFM cannot run in the lab (it needs a real subnet manager and real switches), so the lab
serves a simulator of the part of its REST API kiln uses, faithful to the reference
(shared/specs/ufm-rest-api.md): the same paths, field names and status codes, over HTTPS
with a certificate from the lab CA and HTTP Basic authentication with the lab's per-lab
UFM credentials (`<lab>/secrets.yaml`, entry `ufm`).

    https://10.231.0.1:8443/ufmRest/
        resources/systems[/<guid>,…]     hosts (one per GPU node) and switches
        resources/ports[/<name>,…]       ?system= ?sys_type= ?active= ?high_ber_only=
        resources/links                  ?system=
        resources/pkeys                  GET; POST (add GUIDs), PUT (set GUIDs)
        resources/pkeys/<pkey>           GET, DELETE
        resources/pkeys/add              POST (empty partition)
        resources/pkeys/hosts            POST (every HCA port of the named hosts)
        resources/pkeys/<pkey>/guids/<g1>,<g2>   DELETE
        resources/pkeys/<pkey>/hosts/<h1>,<h2>   DELETE
        app/events[/<id>]                GET (?object_name= ?type= ?category= ?severity=),
                                         DELETE one
        app/unhealthy_ports[/<port>]     GET; PUT (mark UNHEALTHY / HEALTHY)
        app/ufm_version                  GET
        app/tokens                       GET, POST (create); app/tokens/revoke POST

    https://10.231.0.1:8443/ufmRestV3/... the same resources, `Authorization: Basic <token>`

The fabric (lab/ufm_sim/fabric.py) is every GPU node's eight ConnectX-7 ports as the
node's own `ibstat` shows them (faults applied by lab.hwsim), cabled rail-optimised to a
simulated leaf/spine fabric of QM9700 switches. Partitions, events and hand-marked
unhealthy ports persist in `<lab>/ufm/` (lab/ufm_sim/store.py) from `start` (which
empties it) for the life of the lab. Counter events
(110 symbol errors, 112 link downed, 113, 917/918 symbol BER) are logged only when asked
(Store.port_event): the lab's links carry no bit errors. Events have no time filter, as
UFM documents none (reference §4.3): clients filter on `timestamp`. Known limits: no
`/ufmRestV2` (session, client certificate) prefix, no actions, jobs, alarms or reports;
PKey changes are recorded, not enforced on any data path (the lab has no InfiniBand data
path).

The lab runs it as a service process (lab/services.py): `python -m lab.ufm_sim --lab DIR`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

ADDRESS = "10.231.0.1"
PORT = 8443
SERVICE = "ufm"
URL = f"https://{ADDRESS}:{PORT}/"
# What holds the `kiln` package: the service process imports it from there (a checkout
# whose kiln is not installed in this interpreter, too).
_ROOT = Path(__file__).resolve().parents[3]


def cert_paths(lab: Path) -> tuple[Path, Path]:
    """Where `start` puts the simulator's certificate and key (lab/tls.py's naming)."""
    from kiln.lab.tls import tls_dir

    return tls_dir(lab) / f"{SERVICE}.pem", tls_dir(lab) / f"{SERVICE}.key"


def start(lab: Path, state: object, log: Callable[[str], None] = print) -> str:
    """Issue the simulator's certificate and start it; returns a line for `kiln lab up`.

    `state` (the LabState being brought up) is not changed: its `endpoints["ufm"]` is the
    lab-wide constant `lab.state.UFM_URL`, the same address as `URL`.
    """
    import shutil

    from kiln.lab import services, tls

    lab = Path(lab)
    if services.running(lab, SERVICE):
        return f"UFM simulator: {URL}ufmRest (already running)"
    # A new lab starts with a UFM that has seen nothing: no partitions, events or marks
    # left from the previous lab in this directory.
    shutil.rmtree(lab / "ufm", ignore_errors=True)
    cert, key = tls.issue_cert(lab, SERVICE, [ADDRESS])
    argv = [sys.executable, "-m", "kiln.lab.ufm_sim", "--lab", str(lab),
            "--cert", str(cert), "--key", str(key)]
    services.start(lab, SERVICE, argv, port=(ADDRESS, PORT), env={"PYTHONPATH": str(_ROOT)})
    return f"UFM simulator: {URL}ufmRest (basic auth: secrets file entry 'ufm')"


def stop(lab: Path) -> None:
    from kiln.lab import services

    services.stop(Path(lab), SERVICE)

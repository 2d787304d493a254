"""The lab's MAAS simulator: the subset of MAAS's API 2.0 that kiln uses, shaped like MAAS 3.6.

MAAS itself cannot run here (it needs its region/rack controllers, PostgreSQL, real PXE), so
the lab has this simulator, named as one everywhere. It answers at
`http://10.231.0.1:5240/MAAS/api/2.0/` with MAAS's paths, operations, field names, status
numbers and names, status codes and error texts (maasserver sources, MAAS 3.6), checks OAuth1
PLAINTEXT on every request (auth.py), and moves machines through MAAS's lifecycle with real
delays (lifecycle.py). It touches a machine only as MAAS does: through the machine's BMC
over the network (power.py: Redfish via sushy, IPMI via ipmitool) and through what it offers
the machine's PXE boot (lab/netboot.py). Every request it receives is recorded in
`<lab>/maas/requests.jsonl` (without the Authorization header) so tests can check what
clients sent against MAAS's OpenAPI document (openapi_check.py).

    start(lab, state, log, deployed=False)  enlist every lab node (New, or Deployed) and
                                            start the service (lab/services.py)
    stop(lab)
    python -m lab.maas_sim --lab DIR        the service itself (see __main__.py)

State lives in `<lab>/maas/store.json`; a restarted service keeps its machines and resumes
what was in flight.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from kiln.lab import services
from kiln.lab.maas_sim.enlist import enlist, lab_image
from kiln.lab.maas_sim.store import Store, maas_dir, store_path
from kiln.lab.state import GATEWAY, LabState

SERVICE = "maas-sim"
HOST = GATEWAY
PORT = 5240
URL = f"http://{HOST}:{PORT}/MAAS/"
REQUESTS_LOG = "requests.jsonl"


def requests_log_path(lab: Path) -> Path:
    return maas_dir(lab) / REQUESTS_LOG


def write_fresh_store(lab: Path, state: LabState, deployed: bool) -> Store:
    """A MAAS that has just enlisted the lab's machines: no tags, no request history."""
    store = Store(store_path(lab), enlist(lab, state, deployed, lab_image()), [])
    store.save()
    requests_log_path(lab).unlink(missing_ok=True)
    return store


def start(lab: Path, state: LabState, log: Callable[[str], None] = print, *,
          deployed: bool = False) -> str:
    """Enlist the lab's nodes and serve the MAAS API; return a one-line summary."""
    lab = Path(lab)
    if services.running(lab, SERVICE):  # its machines are in use: keep them
        return f"MAAS simulator: {state.endpoints.get('maas', URL)} (already running)"
    store = write_fresh_store(lab, state, deployed)
    argv = [sys.executable, "-m", "kiln.lab.maas_sim", "--lab", str(lab),
            "--listen", HOST, "--port", str(PORT)]
    services.start(lab, SERVICE, argv, port=(HOST, PORT))
    shape = "Deployed" if deployed else "New"
    return (f"MAAS simulator: {state.endpoints.get('maas', URL)} "
            f"({len(store.machines)} machines {shape})")


def stop(lab: Path) -> None:
    services.stop(Path(lab), SERVICE)

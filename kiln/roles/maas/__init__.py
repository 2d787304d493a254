"""kiln's MAAS role: a MAAS API 2.0 client and the desired states of a machine.

Why requests + requests-oauthlib and not python-libmaas (checked for kiln, 2026):
python-libmaas's last release is 0.6.8 (August 2022), classified for Python 3.6-3.9; it
imports `distutils` (gone in Python 3.12) and passes aiohttp's long-deprecated
`verify_ssl`; its core is asyncio-only (a sync facade runs an event loop per call, which
sits badly inside pyinfra's gevent workers); it builds its handlers at connect time from
`/api/2.0/describe/`; and it drags in pymongo and macaroonbakery. kiln needs about fifteen
calls, every one of them checked against MAAS 3.x's OpenAPI document: a small synchronous
client over requests, signing with OAuth 1.0 PLAINTEXT as MAAS does, is less code than
working around that, and each request it sends is exactly what the test checks.

- client.py: MAASClient, one method per MAAS call (wire format, retries, errors);
- machine.py: Machine, the typed view of MAAS's machine JSON, and MAAS's status numbers;
- lifecycle.py: commissioned / deployed / released / tagged: wait, show progress, fail
  clearly with MAAS's own status_message;
- userdata.py: the cloud-config kiln deploys with (SSH key, apt mirror);
- settings.py: the client and machine identity for a node, from its host data;
- apicheck.py: record requests and validate them against MAAS's OpenAPI document (tests).
"""

from kiln.roles.maas.client import MAASClient, SentRequest
from kiln.roles.maas.errors import (
    ImageMismatch,
    MAASAuthError,
    MAASError,
    MAASNotFound,
    MAASRequestError,
    MAASTimeout,
    MAASUnavailable,
    MachineFailed,
    MachineStateError,
)
from kiln.roles.maas.lifecycle import (
    Outcome,
    StatusChange,
    Waiter,
    commissioned,
    deployed,
    released,
    tagged,
)
from kiln.roles.maas.machine import Machine, Status
from kiln.roles.maas.settings import client_for_host, identity_for_host
from kiln.roles.maas.userdata import AptMirror, AptSource, cloud_config, lab_vendor_mirror

__all__ = [
    "AptMirror",
    "AptSource",
    "ImageMismatch",
    "MAASAuthError",
    "MAASClient",
    "MAASError",
    "MAASNotFound",
    "MAASRequestError",
    "MAASTimeout",
    "MAASUnavailable",
    "Machine",
    "MachineFailed",
    "MachineStateError",
    "Outcome",
    "SentRequest",
    "Status",
    "StatusChange",
    "Waiter",
    "client_for_host",
    "cloud_config",
    "commissioned",
    "deployed",
    "identity_for_host",
    "lab_vendor_mirror",
    "released",
    "tagged",
]

"""kiln's ufm role: the InfiniBand fabric as UFM (or, without UFM, opensm) sees and manages it.

- client.py: UFMClient on requests: basic auth (`/ufmRest`) or an access token
  (`/ufmRestV3`), TLS against the CA bundle, bounded retries (core/retry.py);
- resources.py: Port, UnhealthyPort, Event, Partition: UFM's objects, typed;
- view.py: FabricView, each UFM resource read once per run and operation, shared by hosts;
- checks.py: a node's rails from the fabric side (PortResult / FabricReport, OK/CRITICAL);
- operations.py: fabric_healthy (check, ledger, fail the node) and pkey_members;
- opensm.py, deploy.py: partitions.conf and opensm.conf from the same PKey declaration;
- settings.py: the client, PKey declarations and fabric manager from group data.

Not wired into bring-up here (kiln/pipeline.py, roles/infiniband): the lead does that.
"""

from kiln.roles.ufm.checks import (
    CHECK_NAME,
    Expected,
    FabricReport,
    PortResult,
    Verdict,
    check_node,
)
from kiln.roles.ufm.client import UFMClient
from kiln.roles.ufm.errors import (
    UFMAuthError,
    UFMError,
    UFMRequestError,
    UFMTLSError,
    UFMUnavailable,
)
from kiln.roles.ufm.settings import client_for, fabric_manager, pkey_declarations
from kiln.roles.ufm.view import FabricView, fabric_view

__all__ = [
    "CHECK_NAME",
    "Expected",
    "FabricReport",
    "FabricView",
    "PortResult",
    "UFMAuthError",
    "UFMClient",
    "UFMError",
    "UFMRequestError",
    "UFMTLSError",
    "UFMUnavailable",
    "Verdict",
    "check_node",
    "client_for",
    "fabric_manager",
    "fabric_view",
    "pkey_declarations",
]

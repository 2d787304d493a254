"""kiln's ufm role: the InfiniBand fabric as UFM (or, without UFM, opensm) sees and manages it.

- client.py: UFMClient on requests: basic auth (`/ufmRest`) or an access token
  (`/ufmRestV3`), TLS against the CA bundle, bounded retries (core/retry.py);
- resources.py: Port, UnhealthyPort, Event, Partition: UFM's objects, typed;
- view.py: FabricView, each UFM resource read once per run and operation, shared by hosts;
- checks.py: a node's rails from the fabric side: one kiln.core.checks.CheckResult per HCA
  port (OK / CRITICAL / UNKNOWN, evidence, remediation), a FabricReport per node;
- operations.py: fabric_healthy (check; record what differs in the ledger; fail the node)
  and pkey_members;
- opensm.py, deploy.py: partitions.conf and opensm.conf from the same PKey declaration;
- settings.py: the client, PKey declarations and fabric manager from group data.

Public operations and deploys, imported from here:

    fabric_healthy(hca_ports, since=None, after=None)
        run by the fabric stage (kiln.roles.infiniband.infiniband) after the node-side check
        on clusters with UFM;
    pkey_members(pkey, ports={node: [port GUID, ...]} | members={GUID: membership})
        a declared tenant PKey (kiln_ufm_pkeys) holds exactly these ports, adding and
        removing only what differs; for the gate (pooled nodes in, quarantined and
        reprovisioned ones out): run it on one host, the PKey is the cluster's;
    opensm(members=None)
        a service node's opensm configuration and partitions, for `kiln_fabric_manager:
        opensm`; subnet_manager() runs it on service nodes where opensm_declared()
        (kiln_fabric_manager opensm and PKeys declared): kiln.pipeline wires that in.
"""

from kiln.roles.ufm.checks import (
    CHECK_NAME,
    Expected,
    FabricReport,
    check_node,
)
from kiln.roles.ufm.client import UFMClient
from kiln.roles.ufm.deploy import opensm, opensm_declared, subnet_manager
from kiln.roles.ufm.errors import (
    UFMAuthError,
    UFMError,
    UFMRequestError,
    UFMTLSError,
    UFMUnavailable,
)
from kiln.roles.ufm.operations import fabric_healthy, pkey_members
from kiln.roles.ufm.settings import client_for, fabric_manager, pkey_declarations
from kiln.roles.ufm.view import FabricView, fabric_view

__all__ = [
    "CHECK_NAME",
    "Expected",
    "FabricReport",
    "FabricView",
    "UFMAuthError",
    "UFMClient",
    "UFMError",
    "UFMRequestError",
    "UFMTLSError",
    "UFMUnavailable",
    "check_node",
    "client_for",
    "fabric_healthy",
    "fabric_manager",
    "fabric_view",
    "opensm",
    "opensm_declared",
    "pkey_declarations",
    "pkey_members",
    "subnet_manager",
]

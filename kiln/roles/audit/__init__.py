"""Audit: is the fleet still the fleet? Read everything the manifests pin, change nothing.

    pyinfra    inventory/prod.py deploy/audit.py   # read, print what differs (a preview)
    pyinfra -y inventory/prod.py deploy/audit.py   # the same, recorded: cron and CI use this

Per GPU node, in one SSH command (kiln.roles.audit.read) with the BMC read beside it: the
running kernel, each pinned package's version and hold, the running driver, the firmware of
every manifest component (BIOS, BMC, ConnectX, GPU VBIOS, HGX, transceivers: by the
manifest's recognition rules), mlxconfig per HCA, the BIOS attributes, and the GPU and HCA
count, model, rate and PCIe width. Each value is compared with the node's SKU manifest
(kiln.roles.audit.observe); values pinned nowhere are compared across the nodes of one SKU
(kiln.roles.audit.fleet). The report prints only what differs, one line per group, with the
deploy that fixes it (kiln.roles.audit.report). With -y the audit is recorded in the ledger
(when each drift was first seen) and in `<state>/reports/audit-<id>.json`; a node that differs
fails, so the exit code is 0 only for a clean fleet. No operation changes a node.
"""

from pyinfra import host
from pyinfra.api import deploy


@deploy("Audit: compare each node with its manifest, change nothing")
def audit() -> None:
    # Imported when the stage runs, as the other roles do (the parsers import without
    # pyinfra's operation machinery).
    from kiln.roles.audit.operations import audited, node_judged, node_read

    if audited(host):
        node_read(name="Audit: read the node and its BMC, compare with the manifest")
        node_judged(name="Audit: judge the node with the fleet")

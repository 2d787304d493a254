"""Fill the cluster's local file mirror with exactly what the manifests pin, and point every
node at it.

    pyinfra -y inventory/prod.py deploy/mirror.py

On the service nodes: nginx serving the mirror tree, then the fill: the pinned apt packages
of every SKU in the inventory with the dependency closure the base OS image lacks (resolved
by apt itself), the manifests' firmware blobs, and the images and wheels host data names;
every file checked against its sha256, the apt repository signed with the cluster's mirror
key. On every node: apt and pip use the mirror.

Where each part runs (see roles/mirror/__init__.py for why): apt resolves the closure on the
controller (index metadata only), the service node fetches the files from the upstream
itself (the bytes cross the uplink once, never through the controller), the controller signs
(the private key stays in state/). Nothing is fetched twice: a file already on the mirror
with the right sha256 is left alone, and the run says `mirror: fetched 0 files, 0 bytes`.
"""

from pyinfra import host

from kiln.core.runlock import hold_nodes_for_run
from kiln.roles.mirror import mirror, mirror_clients

hold_nodes_for_run("deploy/mirror.py")

if "service" in host.groups:
    mirror()
mirror_clients()

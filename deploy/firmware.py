"""Firmware only: a rolling update of the fleet to the manifests' firmware.

    pyinfra -y inventory/prod.py deploy/firmware.py                  # the whole fleet
    pyinfra    inventory/prod.py deploy/firmware.py --limit rack_r01 # preview: what would change

Per GPU node (roles/firmware): BIOS, BMC, ConnectX and GPU firmware read from the BMC
(Redfish), mlxfwmanager and nvidia-smi and matched to firmware/<sku>.yaml; what differs is
updated from the mirror's blobs after their sha256 and size are checked: the node is drained
from the pool first, BIOS/BMC through Redfish SimpleUpdate, ConnectX through mlxfwmanager,
then the reset through the BMC and a check that the new versions run.

Nodes go in batches of the manifest's `max_parallel_firmware`; a batch starts only when no
node of an earlier batch failed, so one bad image or one bad node stops the rollout there and
the exit code says so. Nodes drained for the update stay out of the pool until the gate
(bring-up) puts them back. A second run on an updated fleet changes nothing.
"""

from kiln.core.runlock import hold_nodes_for_run
from kiln.roles.firmware import firmware

hold_nodes_for_run("deploy/firmware.py")

firmware(rolling=True)

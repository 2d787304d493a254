"""The stages after a node has an OS, shared by bring-up and reprovisioning."""

from pyinfra import host

from kiln.roles.base import base
from kiln.roles.burnin import burnin
from kiln.roles.firmware import firmware
from kiln.roles.gate import gate
from kiln.roles.health import health
from kiln.roles.infiniband import infiniband, ofed
from kiln.roles.kraken import kraken
from kiln.roles.mirror import mirror_clients
from kiln.roles.nvidia import nvidia
from kiln.roles.ufm import subnet_manager


def configure_and_gate() -> None:
    """Pin the stack, check the node, and gate it into the pool (GPU nodes only)."""
    # Every node installs from the cluster's mirror (a reprovisioned one too).
    mirror_clients()
    base()
    if "gpu" in host.groups:
        # OFED before the driver: nvidia-peermem is built against the RDMA stack it finds.
        ofed()
        nvidia()
    # Firmware after the packages: mlxfwmanager comes with OFED (mft) and the GPUs' VBIOS is
    # read with nvidia-smi. Before the fabric: port settings assume the pinned NIC firmware.
    firmware()
    kraken()
    if "service" in host.groups:
        # A fabric without UFM: opensm on the service node, its partitions from the same
        # PKey declaration (nothing unless kiln_fabric_manager is opensm and PKeys are
        # declared). Before the GPU nodes' fabric stage: their ports need a subnet manager.
        subnet_manager()
    if "gpu" in host.groups:
        infiniband()
        health()
        burnin()
        gate()

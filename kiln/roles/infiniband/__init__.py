"""InfiniBand: the OFED stack pinned; the rails right on the node (UFM: roles/ufm).

    ofed()        the manifest's OFED packages (roles.infiniband.pinsets) installed at exactly
                  their versions, pinned (one apt preferences file) and held; a release change
                  is one transaction, like the NVIDIA sets.
    infiniband()  on each GPU node (roles.infiniband.operations): the manifest's mlxconfig
                  settings on every HCA (set what differs, mlxfwreset or a power cycle through
                  the BMC, read back); memlock for RDMA (base's operation); nvidia-peermem
                  loaded now and at boot; IPoIB on every rail at the inventory's addresses
                  (roles.infiniband.ipoib); then the node-side check (roles.infiniband.checks):
                  every HCA the manifest's topology.hca expects present, Active/LinkUp, at its
                  rate, link layer and PCIe width; then, on a cluster with UFM (kiln_ufm_server
                  set, kiln_fabric_manager not "opensm"), the same rails from the fabric's
                  side (roles.ufm.fabric_healthy: switch port up at rate, not unhealthy, no
                  link-down or error events since the node-side check).

Host data: kiln_sku / kiln_firmware_dir (the manifest), kiln_bmc (the power cycle),
kiln_ipoib (from the inventory's `ipoib` scheme; without it IPoIB is left alone),
kiln_memlock (roles.base.settings), kiln_ufm_server / kiln_fabric_manager (roles.ufm).
Service nodes are left alone (opensm, for a fabric without UFM: kiln.pipeline).
"""

from functools import partial

from pyinfra import host
from pyinfra.api import deploy

from kiln.core.context import node_context
from kiln.core.errors import KilnError
from kiln.core.outcomes import refuse
from kiln.roles import ufm
from kiln.roles.base import operations as base_operations
from kiln.roles.base import settings_for_host as base_settings_for_host
from kiln.roles.infiniband import operations
from kiln.roles.infiniband.checks import CHECK_NAME
from kiln.roles.infiniband.ipoib import DATA_KEY, settings_from_data
from kiln.roles.infiniband.pinsets import SCOPE, ofed_pin_sets


@deploy("OFED: the InfiniBand stack, exact and held")
def ofed() -> None:
    try:
        context = node_context(host)
        manifest, path = context.manifest, context.manifest_path
        sets = ofed_pin_sets(manifest, str(path))
    except KilnError as exc:
        refuse(name="OFED manifest", message=str(exc))
        return
    pins = [(pin.name, pin.version) for pin_set in sets for pin in pin_set.pins]
    base_operations.apt_index_current(name="apt index has the pinned OFED versions", pins=pins)
    base_operations.pinned_packages(name="OFED packages exact and held", scope=SCOPE,
                                    sets=sets, manifest=str(path))


def _is_gpu() -> bool:
    return "gpu" in host.groups or node_context(host).role == "gpu"


@deploy("InfiniBand: ports in IB mode, IPoIB, peermem, checked")
def infiniband() -> None:
    if not _is_gpu():
        return
    try:
        context = node_context(host)
        manifest, path = context.manifest, context.manifest_path
        ipoib_settings = settings_from_data(context.get(DATA_KEY), context.label)
        memlock = base_settings_for_host().memlock  # the base stage's own setting
        with_ufm = context.ufm_server is not None and ufm.fabric_manager(context) == "ufm"
    except KilnError as exc:
        refuse(name="InfiniBand manifest and settings", message=str(exc))
        return
    operations.mlxconfig_settings(name="HCA settings (mlxconfig) as the manifest sets",
                                  settings=dict(manifest.settings.mlxconfig), source=str(path))
    base_operations.rdma_limits(name="memlock for RDMA", memlock=memlock)
    operations.peermem(name="nvidia-peermem loaded, now and at boot")
    if ipoib_settings is not None:
        operations.ipoib(name="IPoIB on every rail", settings=ipoib_settings)
    operations.fabric_check(name="Every HCA Active, LinkUp, at rate and width",
                            expect=manifest.topology.hca)
    if with_ufm:
        # The event window (link down, symbol errors, BER) starts at the later of the node's
        # last UFM pass in the ledger and the moment the node-side check ran in this run.
        # The node-side check runs after every reset this stage causes (mlxfwreset, the
        # power cycle through the BMC: both log link-down events that are kiln's own, not
        # faults) and after the firmware stage's, and it has just seen every link Active/
        # LinkUp; so this run's own resets are never counted, while UFM's unhealthy ports
        # still show a rail that flapped before. The ledger's last pass keeps the window
        # honest when the check runs without the node-side one in the same run (an audit).
        # The port GUIDs are read when the operation runs (the node may have no OS yet
        # while the run is planned).
        ufm.fabric_healthy(name="Every rail healthy in UFM: switch port up, at rate, "
                                "no faults",
                           hca_ports=partial(operations.rail_ports, manifest.topology.hca),
                           after=CHECK_NAME)

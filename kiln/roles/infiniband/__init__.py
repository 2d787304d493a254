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
                  rate, link layer and PCIe width.

Host data: kiln_sku / kiln_firmware_dir (the manifest), kiln_bmc (the power cycle),
kiln_ipoib (from the inventory's `ipoib` scheme; without it IPoIB is left alone),
kiln_memlock (roles.base.settings). Service nodes are left alone.
"""

from pyinfra import host
from pyinfra.api import deploy

from kiln.core.context import node_context
from kiln.core.errors import KilnError
from kiln.core.outcomes import refuse
from kiln.roles.base import operations as base_operations
from kiln.roles.base import settings_for_host as base_settings_for_host
from kiln.roles.infiniband import operations
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

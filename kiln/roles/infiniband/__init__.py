"""InfiniBand: the OFED stack pinned; ports in IB mode, IPoIB, UFM (not built yet).

    ofed()        the manifest's OFED packages (roles.infiniband.pinsets) installed at exactly
                  their versions, pinned (one apt preferences file) and held; a release change
                  is one transaction, like the NVIDIA sets.
    infiniband()  ConnectX ports in IB mode, IPoIB, nvidia-peermem, UFM: not built yet.
"""

from pyinfra import host
from pyinfra.api import deploy

from kiln.core.context import node_context
from kiln.core.errors import KilnError
from kiln.core.outcomes import not_built, refuse
from kiln.roles.base import operations as base_operations
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


@deploy("InfiniBand: ports in IB mode, IPoIB, UFM")
def infiniband() -> None:
    not_built(stage="infiniband", awaiting="the fabric stage (roles/infiniband)")

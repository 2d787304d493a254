"""Which manifest packages the fabric role pins: the OFED stack, exact and held.

DOCA-OFED (or MLNX_OFED) is one release of many packages: the `doca-ofed` metapackage
depends on the exact versions of its userspace (rdma-core's Mellanox build, infiniband-diags,
ibverbs-utils), mft (mlxfwmanager, mlxconfig, flint) and perftest. Those exact dependencies
are the pin's companions (roles.base.aptpins) and move with it. The manifest may also pin
perftest on its own, when the SKU takes a perftest newer than the OFED release carries.
"""

from __future__ import annotations

from kiln.core.manifest import Manifest
from kiln.roles.base.aptpins import PinError, PinSet, package_pins

SCOPE = "ofed"

# (set name, manifest package keys). Both move with the OFED release.
OFED_SETS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ofed", ("ofed", "perftest")),
)


def ofed_keys() -> tuple[str, ...]:
    return tuple(key for _, keys in OFED_SETS for key in keys)


def ofed_pin_sets(manifest: Manifest, source: str) -> list[PinSet]:
    """The OFED pin sets for `manifest` (read from file `source`)."""
    if "ofed" not in manifest.packages:
        raise PinError(f"{source}: packages.ofed: not set; GPU nodes need the OFED stack "
                       "(doca-ofed or mlnx-ofed-all) pinned")
    sets = []
    for set_name, keys in OFED_SETS:
        pins = package_pins(manifest.packages, keys)
        if pins:
            # remove_replaced: a move from mlnx-ofed-all to doca-ofed drops the old metapackage.
            sets.append(PinSet(SCOPE, set_name, pins, remove_replaced=True))
    return sets

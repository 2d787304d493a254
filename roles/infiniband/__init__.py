"""InfiniBand: OFED, ports in IB mode, IPoIB, UFM."""

from pyinfra.api import deploy

from roles.stages import not_built


@deploy("InfiniBand: OFED, ports in IB mode, IPoIB, UFM")
def infiniband() -> None:
    not_built(stage="infiniband", awaiting="the fabric stage (roles/infiniband)")

"""Base: OS pins, apt sources, kernel, RDMA limits."""

from pyinfra.api import deploy

from roles.stages import not_built


@deploy("Base: OS pins, apt sources, kernel, RDMA limits")
def base() -> None:
    not_built(stage="base", awaiting="Pin the stack (roles/base)")

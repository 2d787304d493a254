"""NVIDIA: driver, fabric manager, DCGM, CUDA, NCCL, exact and held."""

from pyinfra.api import deploy

from roles.stages import not_built


@deploy("NVIDIA: driver, fabric manager, DCGM, CUDA, NCCL, exact and held")
def nvidia() -> None:
    not_built(stage="nvidia", awaiting="Pin the stack (roles/nvidia)")

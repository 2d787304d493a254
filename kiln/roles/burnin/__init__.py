"""Burn-in: dcgmi diag, NCCL, ib_write_bw."""

from pyinfra.api import deploy

from kiln.core.outcomes import not_built


@deploy("Burn-in: dcgmi diag, NCCL, ib_write_bw")
def burnin() -> None:
    not_built(stage="burnin", awaiting="the burn-in stage (roles/burnin)")

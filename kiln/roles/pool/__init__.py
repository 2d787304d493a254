"""The training pool: which nodes jobs may land on.

Every backend answers the same three questions and makes the same two changes:

    pool = pool_for(host)            # the backend group data `kiln_pool` names
    pool.entry("gpu-003")            # PoolEntry: pooled, drained by kiln, held by another, unknown
    pool.add("gpu-003")              # back in the pool: only from a drain kiln made
    pool.drain("gpu-003", "kiln: ...")

The rule every backend keeps (DESIGN: the gate only changes what kiln set): a drain is
kiln's when its reason starts with REASON_PREFIX. kiln adds back only nodes it drained,
never overwrites another's reason, and never resumes a node someone else took out; both
calls return whether anything changed, so operations can say "no change".

Backends: `file` (FilePool, kiln.roles.pool.file), the embedded default; `slurm`
(SlurmPool, kiln.roles.pool.slurm), Slurm's own node states through `scontrol`;
`kubernetes` (KubernetesPool, kiln.roles.pool.kubernetes), a label and kiln's taint on the
Node, through the official client (imported only when group data names it).
"""

from __future__ import annotations

from typing import Any

from kiln.core.context import node_context
from kiln.roles.pool.file import FilePool
from kiln.roles.pool.model import (
    REASON_PREFIX,
    HeldByAnother,
    Membership,
    Pool,
    PoolEntry,
    is_kilns,
    kiln_reason,
    membership_of,
)
from kiln.roles.pool.slurm import SlurmPool, controller_runner

__all__ = ["REASON_PREFIX", "FilePool", "HeldByAnother", "Membership", "Pool", "PoolEntry",
           "SlurmPool", "is_kilns", "kiln_reason", "membership_of", "pool_for"]


def pool_for(host: Any) -> Pool:
    """The pool a pyinfra host's group data names (kiln_pool; kiln_pool_file for `file`)."""
    ctx = node_context(host)
    settings = ctx.pool_backend
    names = {ctx.label: settings.node_name} if settings.node_name else {}
    if settings.backend == "kubernetes":
        from kiln.roles.pool.kubernetes import KubernetesPool, core_v1

        return KubernetesPool(core_v1(settings.kubeconfig, settings.context,
                                      settings.in_cluster),
                              tolerated=settings.tolerated_taints, names=names)
    if settings.backend == "slurm":
        return SlurmPool(controller_runner(host, settings.controller or ""), names=names)
    return FilePool(ctx.pool_file)

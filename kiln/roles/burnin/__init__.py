"""Burn-in: the node under load, alone and with partners, until the bad ones are named.

    burnin()   bring-up's burn-in stage on every GPU node: dcgmi diag at the SKU's burn-in
               level, all_reduce_perf on the node's 8 GPUs, ib_write_bw per HCA (each
               against the manifest's floors), then two-node all_reduce_perf under mpirun
               with the isolation that names the bad node in about two rounds without
               quarantining its good partner (kiln.roles.burnin.isolation)

A node that fails its single-node burn-in leaves the run before the multi-node rounds (its
partner would only be blamed with it). Every result goes into the ledger. Host data:
kiln_burnin_state (the burn-in SSH key, `kiln burnin init-key`), kiln_burnin_mpi_options
(extra mpirun arguments, e.g. the interface for its own traffic), kiln_burnin_address
(the name mpirun uses for the node; by default its inventory name), kiln_leaf (its leaf
switch, so round 1 pairs across leaves), kiln_burnin_seed (repeatable pairings),
kiln_burnin_force (burn in a pooled node again).
"""

from pyinfra import host
from pyinfra.api import deploy


@deploy("Burn-in: dcgmi diag, NCCL, ib_write_bw")
def burnin() -> None:
    # Imported when the stage runs: the parsers and judges import without pyinfra's
    # operation machinery (the benchmark, the unit tests).
    from kiln.roles.burnin.operations import install_key, single_node_burnin

    if "gpu" not in host.groups:
        return
    install_key()
    single_node_burnin(name="Burn-in: dcgmi diag, all_reduce_perf on 8 GPUs, ib_write_bw "
                            "per HCA")
    _pairwise()


@deploy("Burn-in: two-node all_reduce_perf")
def pairwise_burnin() -> None:
    """The multi-node part alone (a soak of the isolation, a fleet already past its
    single-node burn-in)."""
    from kiln.roles.burnin.operations import install_key

    if "gpu" not in host.groups:
        return
    install_key()
    _pairwise()


def _pairwise() -> None:
    from kiln.roles.burnin.operations import multi_node_burnin, take_part

    take_part()
    multi_node_burnin(name="Burn-in: two-node all_reduce_perf, isolating the bad nodes")

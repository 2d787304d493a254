"""Burn-in alone, on nodes past bring-up's earlier stages (a repaired node, a soak):

    pyinfra -y inventory/prod.py deploy/burnin.py                      # every GPU node
    pyinfra -y inventory/prod.py deploy/burnin.py --limit 'gpu-0[12]*'
    pyinfra -y inventory/prod.py deploy/burnin.py --data kiln_burnin_pairwise_only=true

Loads the nodes: a pooled node whose last burn-in passed is left alone unless
kiln_burnin_force is set. Results go into the ledger; a node that fails is named with its
class (wrong results, below the floor, an outlier, a crash, a hang, could not test).
"""

from pyinfra import host

from kiln.core.runlock import hold_nodes_for_run
from kiln.roles.burnin import burnin, pairwise_burnin

hold_nodes_for_run("deploy/burnin.py")

if host.data.get("kiln_burnin_pairwise_only"):
    pairwise_burnin()
else:
    burnin()

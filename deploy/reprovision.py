"""Reprovision a replaced or reimaged node, then bring it back the way bring-up does.

    pyinfra -y inventory/prod.py deploy/reprovision.py --limit gpu-017

Drain from the pool, release with erase, commission, deploy, then every later bring-up
stage. Only the nodes named by --limit are touched.
"""

from pyinfra import host

from kiln.core.runlock import hold_nodes_for_run
from kiln.pipeline import configure_and_gate
from kiln.roles.gate import gate_failures
from kiln.roles.provision import reprovision, will_be_imaged

hold_nodes_for_run("deploy/reprovision.py")
# A GPU node that fails any stage is quarantined with the reason, as it fails.
gate_failures()

reprovision()
if not will_be_imaged(host):
    # In a change preview the node's OS is about to be wiped: nothing to plan from.
    configure_and_gate()

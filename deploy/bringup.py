"""Bring-up: bare metal to the training pool, one stage after another.

    pyinfra -y inventory/prod.py deploy/bringup.py

Every stage runs on every node that is still in the run; a node that fails a stage drops
out (pyinfra's rule) and the gate keeps it out of the pool. Stages are idempotent: on a
converged cluster a second run changes nothing.
"""

from pyinfra import host

from kiln.core.runlock import hold_nodes_for_run
from kiln.pipeline import configure_and_gate
from kiln.roles.gate import gate_failures
from kiln.roles.mirror import mirror
from kiln.roles.provision import provision, will_be_imaged

hold_nodes_for_run("deploy/bringup.py")
# A GPU node that fails any stage is quarantined with the reason, as it fails.
gate_failures()

provision()
if will_be_imaged(host):
    # Change preview only (no -y): a node with no OS yet has no facts to plan from; its
    # later stages are planned and run after it is imaged, in the run that images it.
    pass
else:
    if "service" in host.groups:
        mirror()
    configure_and_gate()

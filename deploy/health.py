"""Health checks on a running fleet: every single-node check; changes nothing on the nodes.

    pyinfra inventory/prod.py deploy/health.py              # preview: reads and judges
    pyinfra -y inventory/prod.py deploy/health.py           # records, drains what failed
    pyinfra -y inventory/prod.py deploy/health.py --limit gpu-017

A pooled node that turns CRITICAL is drained from the pool with kiln's reason and returns
only through the gate. `kiln health NODE` prints the results the ledger holds.
"""

from kiln.core.runlock import hold_nodes_for_run
from kiln.roles.health import fleet_health

hold_nodes_for_run("deploy/health.py")

fleet_health()

"""Health checks on a running fleet: every single-node check; changes nothing on the nodes.

    pyinfra inventory/prod.py deploy/health.py              # preview: reads and judges
    pyinfra -y inventory/prod.py deploy/health.py           # records, drains what failed
    pyinfra -y inventory/prod.py deploy/health.py --limit gpu-017

A pooled node that turns CRITICAL is drained from the pool with kiln's reason and returns
only through the gate. `kiln health NODE` prints the results the ledger holds.
"""

from kiln.roles.health import fleet_health

fleet_health()

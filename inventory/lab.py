"""The lab's inventory: the nodes `kiln lab up` started, read from the lab's state file.

    kiln lab up --nodes 8
    pyinfra -y inventory/lab.py deploy/bringup.py

The state file is `$KILN_LAB_DIR/state.json` (default /var/lib/kiln-lab/state.json).
Groups: gpu, service (by node role) and rack_lab; every host is `@metal/<node>`.
"""

from kiln.lab.inventory import inventory_groups

globals().update(inventory_groups())

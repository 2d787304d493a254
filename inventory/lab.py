"""The lab's inventory: the nodes `kiln lab up` started, read from the lab's state file.

    pyinfra -y inventory/lab.py deploy/bringup.py
"""

from pyinfra.api.exceptions import InventoryError

raise InventoryError(
    "inventory/lab.py: the lab is not built yet (issue 'Lab, part 1: simulated GPU nodes'); "
    "preview against the example with: pyinfra --dry inventory/prod.py deploy/bringup.py"
)

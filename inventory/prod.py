"""Production inventory: the racks and nodes of inventory/prod.yaml as pyinfra groups.

    pyinfra -y inventory/prod.py deploy/bringup.py

Groups: gpu, service, ufm (by node role) and rack_<name> (per rack). Every host is
`@metal/<hostname>`. Credentials are not here: see inventory/group_data/all.py.
"""

from pathlib import Path

from kiln.core.inventory import inventory_groups
from kiln.core.paths import FIRMWARE_DIR

globals().update(inventory_groups(Path(__file__).with_suffix(".yaml"), FIRMWARE_DIR))

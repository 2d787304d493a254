"""Bring-up stage 1 alone: every node known to MAAS, commissioned and deployed.

    pyinfra -y inventory/prod.py deploy/provision.py [--limit NODE]

What deploy/bringup.py does first, for when imaging is all you want (a new rack before its
fabric is cabled, say). A node already deployed with its SKU's image is left alone.
"""

from kiln.core.runlock import hold_nodes_for_run
from kiln.roles.provision import provision

hold_nodes_for_run("deploy/provision.py")

provision()

"""Drift audit: compare every node with its manifest and report; changes nothing on a node.

    pyinfra    inventory/prod.py deploy/audit.py   # print what differs (a preview)
    pyinfra -y inventory/prod.py deploy/audit.py   # the same, recorded; exit 1 on drift
"""

from kiln.roles.audit import audit

audit()

"""Drift audit: compare every node with its manifest and report; changes nothing.

    pyinfra inventory/prod.py deploy/audit.py
"""

from kiln.roles.audit import audit

audit()

"""The tenant PKey holds exactly the given nodes' port GUIDs (tests/lab/test_fabric.py).

The gate will call kiln.roles.ufm.pkey_members with the pooled nodes; here the nodes and
their GUIDs come from host data `test_pkey_ports` ({node: [port GUID]}). Run on one host:
the PKey is the cluster's.

    pyinfra -y inventory/lab.py tests/lab/pkey_deploy.py --limit gpu-001 --data ...
"""

from pyinfra import host

from kiln.roles.ufm import pkey_members

pkey_members(name="Tenant PKey holds exactly the pooled nodes", pkey="0x0a12",
             ports=host.data.get("test_pkey_ports"))

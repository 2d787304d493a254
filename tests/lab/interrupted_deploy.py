"""Bring-up's pinning stages, holding their nodes as every kiln deploy does
(tests/lab/test_interrupted.py kills it mid-install).

    pyinfra -y inventory/lab.py tests/lab/interrupted_deploy.py --limit gpu-001
"""

from pyinfra import host

from kiln.core.runlock import hold_nodes_for_run
from kiln.roles.base import base
from kiln.roles.infiniband import ofed
from kiln.roles.nvidia import nvidia

hold_nodes_for_run("tests/lab/interrupted_deploy.py")

base()
if "gpu" in host.groups:
    ofed()
    nvidia()

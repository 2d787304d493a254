"""Bring-up's fabric stage with the stages it stands on: base, OFED, NVIDIA, then the
fabric (tests/lab/test_fabric.py).

    pyinfra -y inventory/lab.py tests/lab/fabric_deploy.py --limit gpu-001
"""

from pyinfra import host

from kiln.roles.base import base
from kiln.roles.infiniband import infiniband, ofed
from kiln.roles.nvidia import nvidia

if "gpu" in host.groups:
    base()
    ofed()
    nvidia()
    infiniband()

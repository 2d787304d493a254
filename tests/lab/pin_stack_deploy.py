"""Bring-up's pinning stages alone: base, then OFED and NVIDIA on GPU nodes
(tests/lab/test_pin_stack.py).

    pyinfra -y inventory/lab.py tests/lab/pin_stack_deploy.py --limit gpu-006,gpu-007
"""

from pyinfra import host

from kiln.roles.base import base
from kiln.roles.infiniband import ofed
from kiln.roles.nvidia import nvidia

base()
if "gpu" in host.groups:
    ofed()
    nvidia()

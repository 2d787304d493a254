"""The stages burn-in stands on (base, OFED, NVIDIA, the fabric), then burn-in
(tests/lab/test_burnin.py). Burn-in alone runs from deploy/burnin.py.

    pyinfra -y inventory/lab.py tests/lab/burnin_deploy.py
"""

from pyinfra import host

from kiln.roles.base import base
from kiln.roles.burnin import burnin
from kiln.roles.infiniband import infiniband, ofed
from kiln.roles.nvidia import nvidia

if "gpu" in host.groups:
    base()
    ofed()
    nvidia()
    infiniband()
    burnin()

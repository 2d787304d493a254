"""Bring-up's stages on the GPU nodes, in bring-up's order, up to burn-in: base, OFED,
NVIDIA, the fabric, health, burn-in. Run once (tests/lab/conftest.py, the `gpu_stages`
fixture) for the two modules that stand on them: tests/lab/test_burnin.py, then
tests/lab/test_health.py.

    pyinfra -y inventory/lab.py tests/lab/gpu_stages_deploy.py --data kiln_burnin_seed=1
"""

from pyinfra import host

from kiln.roles.base import base
from kiln.roles.burnin import burnin
from kiln.roles.health import health
from kiln.roles.infiniband import infiniband, ofed
from kiln.roles.nvidia import nvidia

if "gpu" in host.groups:
    base()
    ofed()
    nvidia()
    infiniband()
    health()
    burnin()

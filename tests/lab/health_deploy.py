"""The stages the health checks stand on (base, OFED, NVIDIA, the fabric), then health
(tests/lab/test_health.py). The health stage alone runs from deploy/health.py.

    pyinfra -y inventory/lab.py tests/lab/health_deploy.py --limit gpu-001
"""

from pyinfra import host

from kiln.roles.base import base
from kiln.roles.health import health
from kiln.roles.infiniband import infiniband, ofed
from kiln.roles.nvidia import nvidia

if "gpu" in host.groups:
    base()
    ofed()
    nvidia()
    infiniband()
    health()

"""Reprovision a replaced or reimaged node, then bring it back the way bring-up does.

    pyinfra -y inventory/prod.py deploy/reprovision.py --limit gpu-017

Drain from the pool, release with erase, commission, deploy, then every later bring-up
stage. Only the nodes named by --limit are touched.
"""

from pyinfra import host

from roles.base import base
from roles.burnin import burnin
from roles.firmware import firmware
from roles.gate import gate
from roles.health import health
from roles.infiniband import infiniband
from roles.kraken import kraken
from roles.nvidia import nvidia
from roles.provision import reprovision

reprovision()
base()
if "gpu" in host.groups:
    nvidia()
    infiniband()
firmware()
kraken()
if "gpu" in host.groups:
    health()
    burnin()
    gate()

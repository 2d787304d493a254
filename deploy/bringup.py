"""Bring-up: bare metal to the training pool, one stage after another.

    pyinfra -y inventory/prod.py deploy/bringup.py

Every stage runs on every node that is still in the run; a node that fails a stage drops
out (pyinfra's rule) and the gate keeps it out of the pool. Stages are idempotent: on a
converged cluster a second run changes nothing.
"""

from pyinfra import host

from roles.base import base
from roles.burnin import burnin
from roles.firmware import firmware
from roles.gate import gate
from roles.health import health
from roles.infiniband import infiniband
from roles.kraken import kraken
from roles.mirror import mirror
from roles.nvidia import nvidia
from roles.provision import provision

provision()
if "service" in host.groups:
    mirror()
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

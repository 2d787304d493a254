"""The gate on its own, after a stand-in stage that fails on the nodes host data
`test_failing_nodes` names (tests/lab/test_pool_slurm.py): the failing nodes are quarantined
by gate_failures()'s callback, the others pooled by gate(), in the pool group data names.

    pyinfra -y inventory/lab.py tests/lab/gate_deploy.py --limit 'gpu-00[1-4]' \\
        --data 'kiln_pool={"backend": "slurm", "controller": "svc-001"}' \\
        --data 'test_failing_nodes=["gpu-002"]'
"""

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import server

from kiln.roles.gate import gate, gate_failures

gate_failures()


@deploy("Health (stand-in)")
def failing_stage() -> None:
    server.shell(name="GPU 3 row remapping (stand-in)",
                 commands=["echo 'GPU 3 (0000:1b:00.0): row-remap failure, 1 uncorrectable "
                           "bank; replace the GPU' >&2; exit 1"])


if "gpu" in host.groups:
    if host.name in (host.data.get("test_failing_nodes") or []):
        failing_stage()
    gate()

"""Health: single-node checks that catch the failures that raise no error.

    health()        bring-up's health stage: every check on every GPU node, each result
                    recorded in the ledger (node, check, subject, status, evidence, time)
    fleet_health()  deploy/health.py on a running fleet: the same checks; changes nothing on
                    the nodes; a pooled node that turns CRITICAL is drained with kiln's reason

One read per node (kiln.roles.health.probe: nvidia-smi, NVLink, the fabric manager, the
kernel log, the HCAs, the host), parsed and judged on the controller
(kiln.roles.health.judge), the BMC's event log read beside it. Thresholds come from the SKU
manifest's `health:` section. Results: OK, WARN (reported, passes), CRITICAL (keeps the node
out of the pool), UNKNOWN (could not tell; never hides a CRITICAL).

Host data: kiln_sku / kiln_firmware_dir (the manifest), kiln_bmc (the event log),
kiln_ledger, kiln_pool_file, kiln_bootlog_allowlist (the site's reviewed boot-log
allowlist, beside kiln's own; `kiln dmesg learn NODE` adds to it).
"""

from pyinfra import host
from pyinfra.api import deploy


def _is_gpu() -> bool:
    return "gpu" in host.groups


@deploy("Health: single-node checks")
def health() -> None:
    # Imported when the stage runs: the parsers and checks of this package import without
    # pyinfra's operation machinery (kiln parse, kiln health, the unit tests).
    from kiln.roles.health.operations import node_health

    if _is_gpu():
        node_health(name="Health: every single-node check")


@deploy("Health: the running fleet")
def fleet_health() -> None:
    from kiln.roles.health.operations import node_health

    if _is_gpu():
        node_health(name="Health: every single-node check (drain a pooled node that fails)",
                    drain=True)

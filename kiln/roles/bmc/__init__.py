"""kiln's BMC client: power, one-time boot, firmware inventory and updates, BIOS attributes,
event log, the BMC's own restart (`reset_bmc`).

Redfish through sushy (roles/bmc/redfish.py), IPMI through ipmitool (roles/bmc/ipmi.py),
one interface for both (`BMCClient`, roles/bmc/interface.py), chosen by the node's inventory
entry (`bmc.protocol`). Facts read from the controller (roles/bmc/facts.py) and idempotent
pyinfra operations (roles/bmc/operations.py) build on it.

    from kiln.roles.bmc import connect
    bmc = connect(host.data)
    if bmc.power_state() == "off":
        bmc.set_boot_once("pxe")
        bmc.power_on()
"""

from kiln.roles.bmc.client import connect, resolve_target
from kiln.roles.bmc.errors import (
    BMCAuthError,
    BMCError,
    BMCTaskFailed,
    BMCTimeout,
    BMCTLSError,
    BMCUnavailable,
    BMCUnsupported,
)
from kiln.roles.bmc.interface import (
    BiosValue,
    BMCClient,
    BootOverride,
    FirmwareComponent,
    LogEntry,
    UpdateResult,
)

__all__ = [
    "BMCAuthError",
    "BMCClient",
    "BMCError",
    "BMCTLSError",
    "BMCTaskFailed",
    "BMCTimeout",
    "BMCUnavailable",
    "BMCUnsupported",
    "BiosValue",
    "BootOverride",
    "FirmwareComponent",
    "LogEntry",
    "UpdateResult",
    "connect",
    "resolve_target",
]

"""Facts read from a node's BMC: power state, firmware inventory, BIOS attributes, boot
override, event log.

These are not pyinfra `FactBase` classes, on purpose. In pyinfra 3 `host.get_fact(F)` always
runs `F.command()` through the host's connector (`pyinfra.api.facts._get_fact` calls
`host.run_shell_command`); for an `@metal` host that opens SSH to the node, and a node kiln
is bringing up may have no OS yet, or be powered off. A BMC is reached from the controller,
over the management network. So a BMC fact is a function of the pyinfra host (or its host
data) that asks the BMC from the controller and returns plain data, called in an operation
body: reads there, writes only in the yielded `FunctionCommand` (DESIGN.md). Like a
FactBase, it is read fresh at every call; nothing is cached, so nothing can be stale.

Each returns what the BMC said, or raises a BMCError naming the node's BMC.
"""

from __future__ import annotations

import logging
from contextlib import closing
from dataclasses import asdict
from typing import Any

from kiln.core.retry import RetryPolicy
from kiln.roles.bmc.client import connect
from kiln.roles.bmc.interface import BiosValue, BMCClient

logger = logging.getLogger("pyinfra")


def bmc_for(host: Any, retry: RetryPolicy | None = None) -> BMCClient:
    """The client for a pyinfra host's BMC (its node context), or for host data or a BMC
    mapping."""
    warn = None
    if hasattr(host, "log_styled"):
        def warn(message: str) -> None:
            host.log_styled(message, fg="yellow", log_func=logger.warning)
    return connect(host, retry=retry, warn=warn)


def power_state(host: Any, retry: RetryPolicy | None = None) -> str:
    """"on" or "off" ("powering on"/"powering off" while a Redfish BMC is between them)."""
    with closing(bmc_for(host, retry)) as bmc:
        return bmc.power_state()


def firmware_inventory(host: Any, retry: RetryPolicy | None = None) -> list[dict[str, Any]]:
    """[{id, name, version, updateable}, ...] in the BMC's order."""
    with closing(bmc_for(host, retry)) as bmc:
        return [asdict(component) for component in bmc.firmware_inventory()]


def bios_attributes(host: Any, retry: RetryPolicy | None = None) -> dict[str, BiosValue]:
    """{attribute: value} of the BIOS setup in effect now, with the BMC's names and types
    (Redfish Bios Attributes; settings pending for the next reset are not included).
    BMCUnsupported for an IPMI BMC, or a Redfish BMC that has no Bios resource."""
    with closing(bmc_for(host, retry)) as bmc:
        return bmc.bios_attributes()


def boot_override(host: Any, retry: RetryPolicy | None = None) -> dict[str, Any]:
    """{device: "pxe"|"disk"|other|None, persistent: bool, mode: "UEFI"|"Legacy"|None}."""
    with closing(bmc_for(host, retry)) as bmc:
        return asdict(bmc.boot_override())


def event_log(host: Any, limit: int = 1000,
              retry: RetryPolicy | None = None) -> list[dict[str, Any]]:
    """The system event log, oldest first: [{id, created, severity, message}, ...]."""
    with closing(bmc_for(host, retry)) as bmc:
        return [asdict(entry) for entry in bmc.event_log(limit)]

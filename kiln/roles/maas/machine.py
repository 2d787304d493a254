"""A MAAS machine as kiln reads it: typed fields taken from MAAS's machine JSON.

Statuses are compared by MAAS's status *number* (NODE_STATUS in MAAS's own source), not by
name: names differ between MAAS releases ("Failed releasing" became "Releasing failed"),
numbers do not. Names are only shown to people.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from kiln.roles.maas.errors import MAASError


class Status(IntEnum):
    """MAAS's NODE_STATUS numbers."""

    NEW = 0
    COMMISSIONING = 1
    FAILED_COMMISSIONING = 2
    MISSING = 3
    READY = 4
    RESERVED = 5
    DEPLOYED = 6
    RETIRED = 7
    BROKEN = 8
    DEPLOYING = 9
    ALLOCATED = 10
    FAILED_DEPLOYMENT = 11
    RELEASING = 12
    FAILED_RELEASING = 13
    DISK_ERASING = 14
    FAILED_DISK_ERASING = 15
    RESCUE_MODE = 16
    ENTERING_RESCUE_MODE = 17
    FAILED_ENTERING_RESCUE_MODE = 18
    EXITING_RESCUE_MODE = 19
    FAILED_EXITING_RESCUE_MODE = 20
    TESTING = 21
    FAILED_TESTING = 22


# States a machine only leaves by a person's (or a new operation's) doing: MAAS gave up.
FAILURE_STATES = frozenset(
    {
        Status.FAILED_COMMISSIONING,
        Status.BROKEN,
        Status.FAILED_DEPLOYMENT,
        Status.FAILED_RELEASING,
        Status.FAILED_DISK_ERASING,
        Status.FAILED_ENTERING_RESCUE_MODE,
        Status.FAILED_EXITING_RESCUE_MODE,
        Status.FAILED_TESTING,
    }
)


@dataclass(frozen=True)
class Machine:
    system_id: str
    hostname: str
    status: Status
    status_name: str
    status_message: str = ""
    osystem: str = ""
    distro_series: str = ""
    hwe_kernel: str = ""
    power_state: str = "unknown"
    tag_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()
    # The whole document, for fields kiln does not model; not part of equality.
    document: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_json(cls, document: object, where: str) -> Machine:
        """Build from MAAS's JSON; `where` names the endpoint in the error for a bad answer."""
        if not isinstance(document, dict):
            raise MAASError(f"{where}: expected a machine object, got {type(document).__name__}")
        missing = [key for key in ("system_id", "hostname", "status") if key not in document]
        if missing:
            raise MAASError(f"{where}: machine object lacks {', '.join(missing)}")
        try:
            status = Status(int(document["status"]))
        except (TypeError, ValueError):
            raise MAASError(
                f"{where}: machine {document['hostname']}: unknown status "
                f"{document['status']!r}"
            ) from None
        return cls(
            system_id=str(document["system_id"]),
            hostname=str(document["hostname"]),
            status=status,
            status_name=str(document.get("status_name") or status.name.replace("_", " ")),
            status_message=str(document.get("status_message") or ""),
            osystem=str(document.get("osystem") or ""),
            distro_series=str(document.get("distro_series") or ""),
            hwe_kernel=str(document.get("hwe_kernel") or ""),
            power_state=str(document.get("power_state") or "unknown"),
            tag_names=tuple(str(tag) for tag in document.get("tag_names") or ()),
            ip_addresses=tuple(str(ip) for ip in document.get("ip_addresses") or ()),
            document=document,
        )

    @property
    def failed(self) -> bool:
        return self.status in FAILURE_STATES

    def describe_status(self) -> str:
        """`Failed deployment: <MAAS's status_message>` or just the name."""
        if self.status_message:
            return f"{self.status_name}: {self.status_message}"
        return self.status_name

"""UFM's REST objects as kiln reads them: one class per resource, typed fields.

Field names are the reference's (shared/specs/ufm-rest-api.md §3.2 ports, §4.2 unhealthy
ports, §4.3 events, §5.4 PKeys). Fields kiln does not use are ignored, so a newer UFM that
adds some does not break a run; a field kiln needs that is missing or of the wrong type
is a UFMError naming the call.
"""

from __future__ import annotations

import re
from datetime import datetime, tzinfo
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from kiln.core.errors import pydantic_problems
from kiln.roles.ufm.errors import UFMError

# Per-lane signalling rate (Gb/s) of each IB speed name (reference §3.2, speed arithmetic).
LANE_GBPS = {"SDR": 2.5, "DDR": 5.0, "QDR": 10.0, "FDR10": 10.0, "FDR_10": 10.0,
             "FDR": 14.0, "EDR": 25.0, "HDR": 50.0, "NDR": 100.0, "XDR": 200.0}
_WIDTH = re.compile(r"^(?:IB_)?(\d+)[xX]$")


def _guid(value: Any) -> Any:
    return value.lower().removeprefix("0x") if isinstance(value, str) else value


class Resource(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    @classmethod
    def parse(cls, document: Any, where: str) -> Any:
        try:
            return cls.model_validate(document)
        except ValidationError as exc:
            raise UFMError("\n".join(pydantic_problems(f"{where}: {cls.__name__}", exc))) \
                from None

    @classmethod
    def parse_list(cls, document: Any, where: str) -> list[Any]:
        if not isinstance(document, list):
            raise UFMError(f"{where}: expected a JSON array, got {type(document).__name__}")
        return [cls.parse(item, where) for item in document]


def width_lanes(width: str | None) -> int | None:
    """"4x" (v6.20+) or "IB_4x" (older) -> 4."""
    match = _WIDTH.match(width or "")
    return int(match.group(1)) if match else None


def rate_gbps(speed: str | None, width: str | None) -> float | None:
    lanes = width_lanes(width)
    lane = LANE_GBPS.get((speed or "").upper())
    return lane * lanes if lane is not None and lanes is not None else None


class Port(Resource):
    """GET resources/ports: one port, host or switch side."""

    name: str  # "<guid>_<number>"
    guid: str
    system_id: str = Field(alias="systemID")
    system_name: str = ""
    node_description: str = ""
    description: str = ""  # "Computer IB Port" / "Switch IB Port"
    number: int
    dname: str = ""
    physical_state: str = ""
    logical_state: str = ""
    active_speed: str | None = None
    active_width: str | None = None
    peer: str | None = None
    peer_guid: str | None = None
    peer_node_guid: str | None = None
    peer_node_name: str | None = None
    peer_port_dname: str | None = None

    _guids = field_validator("guid", "system_id", "peer_guid", "peer_node_guid")(
        classmethod(lambda cls, v: _guid(v))
    )

    @field_validator("name", "peer")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @property
    def is_host(self) -> bool:
        """An HCA's port (the PDR plugin's test, reference §3.2)."""
        return "Computer IB Port" in self.description

    @property
    def up(self) -> bool:
        return self.logical_state == "Active" and self.physical_state == "Link Up"

    @property
    def rate_gbps(self) -> float | None:
        return rate_gbps(self.active_speed, self.active_width)

    @property
    def has_peer(self) -> bool:
        return bool(self.peer) and self.peer != "n/a"

    @property
    def label(self) -> str:
        """What a technician looks for on the switch: its port label, else its number."""
        return self.dname or str(self.number)


class UnhealthyPort(Resource):
    """GET app/unhealthy_ports: one entry of the list form."""

    node: str = Field(alias="UnhealthyNode")
    guid: str = Field(alias="UnhealthyGUID")
    number: int = Field(alias="UnhealthyPortNumber")
    dname: str = Field("", alias="UnhealthyPortDname")
    condition: str | list[str] = Field("", alias="Condition")
    state: str = Field("", alias="State")
    status_time: str = Field("", alias="StatusTime")

    _g = field_validator("guid")(classmethod(lambda cls, v: _guid(v)))

    @property
    def port_name(self) -> str:
        return f"{self.guid}_{self.number}"

    @property
    def conditions(self) -> list[str]:
        return list(self.condition) if isinstance(self.condition, list) else [self.condition]


# UFM event codes (reference §4.3, from UFM's event.log codes): what the fabric check
# counts against a port.
LINK_DOWN_CODES = {"112": "link downed", "329": "link went down"}
SYMBOL_ERROR_CODES = {"110": "symbol error counter rate"}
BER_CODES = {"917": "symbol BER", "918": "symbol BER warning"}
PORT_TROUBLE_CODES = {**LINK_DOWN_CODES, **SYMBOL_ERROR_CODES, **BER_CODES}


class Event(Resource):
    """GET app/events: one event, v6.17+ (`event_type` holds the code) or older (`type`
    holds it, timestamps carry milliseconds)."""

    id: int
    name: str = ""
    type: str = ""
    event_type: str | None = None
    severity: str = ""
    timestamp: str
    object_name: str = ""
    object_path: str = ""
    description: str = ""

    @field_validator("type", "event_type", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) else value

    @property
    def code(self) -> str:
        if self.event_type:
            return self.event_type
        return self.type if self.type.isdigit() else ""

    def at(self, zone: tzinfo | None) -> float:
        """The event's time as an epoch: UFM writes local time without a zone; `zone` is
        the UFM server's (None: the controller's own)."""
        text = self.timestamp.strip()
        for layout in ("%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S"):
            try:
                naive = datetime.strptime(text, layout)
                break
            except ValueError:
                continue
        else:
            raise UFMError(f"event {self.id}: timestamp {text!r} is not 'YYYY-MM-DD HH:MM:SS'")
        return naive.replace(tzinfo=zone).timestamp() if zone else naive.timestamp()


class PKeyMember(Resource):
    guid: str
    membership: Literal["full", "limited"] = "full"
    index0: bool = False

    _g = field_validator("guid")(classmethod(lambda cls, v: _guid(v)))


class Partition(Resource):
    """GET resources/pkeys/<pkey>?guids_data=true: a partition and its members."""

    partition: str = ""
    ip_over_ib: bool = True
    guids: list[PKeyMember] = Field(default_factory=list)

    def members(self) -> dict[str, str]:
        return {m.guid: m.membership for m in self.guids}

"""Clusters without UFM: opensm's own files, rendered from the same PKey declaration.

`partitions.conf` follows opensm's doc/partition-config.txt (linux-rdma/opensm):

    <PartitionName>=<PKey>[,indx0][,ipoib][,defmember=full|limited] : <port list> ;

with port GUIDs written `0x` + hex and each member's `=full` / `=limited` explicit, so no
member depends on opensm's default (limited). The management partition is written as UFM
keeps it (every end port a full member), which is also what opensm does with no
partitions file at all: `Default=0x7fff, ipoib : ALL=full, SELF=full ;`.

`opensm.conf` holds kiln's few settings (`partition_config_file` pointing at the file
above, the SM's priority, the port GUID it binds to, its log file) as opensm's
`<option> <value>` lines (opensm/osm_subnet.c's option names).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

from pydantic import Field, field_validator

from kiln.core.fabric import PKeyDeclaration, normalise_guid
from kiln.core.models import Strict

HEADER = "# Written by kiln (kiln.roles.ufm.opensm) from kiln_ufm_pkeys; edits are replaced.\n"
MANAGEMENT = "Default=0x7fff, ipoib : ALL=full, SELF=full ;"


class OpenSMSettings(Strict):
    """Group data `kiln_opensm`."""

    conf_path: str = "/etc/opensm/opensm.conf"
    partitions_path: str = "/etc/opensm/partitions.conf"
    service: str = "opensm"
    sm_priority: Annotated[int, Field(ge=0, le=15)] = 15
    port_guid: str | None = None  # the local port opensm binds to; unset: the first active
    log_file: str = "/var/log/opensm.log"
    options: dict[str, str] = Field(default_factory=dict)  # further opensm.conf options

    @field_validator("port_guid")
    @classmethod
    def _guid(cls, value: str | None) -> str | None:
        return normalise_guid(value) if value else None


def partition_line(declared: PKeyDeclaration, members: Mapping[str, str]) -> str:
    flags = [f"{declared.name}={declared.pkey}"]
    if declared.index0:
        flags.append("indx0")
    if declared.ip_over_ib:
        flags.append("ipoib")
    flags.append(f"defmember={declared.membership}")
    ports = ", ".join(f"0x{normalise_guid(g)}={members[g]}"
                      for g in sorted(members, key=normalise_guid))
    return f"{', '.join(flags)} : {ports} ;" if ports else f"{', '.join(flags)} : ;"


def render_partitions(declared: list[PKeyDeclaration],
                      members: Mapping[str, Mapping[str, str]]) -> str:
    """partitions.conf: every declared PKey with its members (pkey -> guid -> membership;
    a PKey with none given is written empty: no port is in it)."""
    lines = [HEADER.rstrip("\n"), MANAGEMENT]
    for d in sorted(declared, key=lambda d: d.value):
        lines.append(partition_line(d, {normalise_guid(g): m for g, m in
                                        members.get(d.pkey, {}).items()}))
    return "\n".join(lines) + "\n"


def render_conf(settings: OpenSMSettings) -> str:
    options = {
        "partition_config_file": settings.partitions_path,
        "sm_priority": str(settings.sm_priority),
        "log_file": settings.log_file,
    }
    if settings.port_guid:
        options["guid"] = f"0x{settings.port_guid}"
    options.update(settings.options)
    return HEADER + "".join(f"{key} {value}\n" for key, value in options.items())

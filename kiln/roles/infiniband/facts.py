"""Facts that read the HCAs; parsing lives in roles.infiniband.parsers."""

from __future__ import annotations

from typing import Any

from pyinfra.api import FactBase

from kiln.core.parsing import parse_fact_output
from kiln.roles.infiniband.parsers import parse_ibstat, parse_sysfs_infiniband


class IbStat(FactBase):
    """Every CA and port as `ibstat` reports it; [] on a host with no HCA."""

    default = list

    def command(self) -> str:
        return "ibstat"

    def requires_command(self) -> str:
        return "ibstat"

    def process(self, output: list[str]) -> list[dict[str, Any]]:
        return parse_fact_output(parse_ibstat, output)


class InfinibandSysfs(FactBase):
    """The HCAs as /sys/class/infiniband shows them, counters included; needs no OFED tools."""

    default = list

    def command(self) -> str:
        # One "PATH:VALUE" line per attribute; the glob matches nothing on a host with no HCA.
        return (
            "for f in /sys/class/infiniband/*/hca_type /sys/class/infiniband/*/fw_ver "
            "/sys/class/infiniband/*/board_id /sys/class/infiniband/*/node_guid "
            "/sys/class/infiniband/*/sys_image_guid "
            "/sys/class/infiniband/*/ports/*/state /sys/class/infiniband/*/ports/*/phys_state "
            "/sys/class/infiniband/*/ports/*/rate /sys/class/infiniband/*/ports/*/link_layer "
            "/sys/class/infiniband/*/ports/*/counters/*; "
            'do [ -f "$f" ] && [ -r "$f" ] && printf "%s:%s\\n" "$f" "$(cat "$f" 2>/dev/null)"; '
            "done; true"
        )

    def process(self, output: list[str]) -> list[dict[str, Any]]:
        return parse_fact_output(parse_sysfs_infiniband, output)

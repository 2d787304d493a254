"""Facts that read the HCAs; parsing lives in roles.infiniband.parsers."""

from __future__ import annotations

import shlex
from typing import Any

from pyinfra.api import FactBase

from kiln.core.parsing import parse_fact_output
from kiln.roles.infiniband.parsers import (
    parse_hca_report,
    parse_ibstat,
    parse_mlxfwreset_query,
    parse_sysfs_infiniband,
)


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


# Kernel modules whose presence the fabric stage reads (as /proc/modules names them). A
# module is loaded when /proc/modules lists it or its /sys/module/<name>/initstate says
# "live" (what modprobe itself asks; a kernel may show one and not the other).
MODULES = ("nvidia_peermem", "ib_ipoib", "mlx5_ib")

# One round trip for everything the stage reads about the HCAs (parsers.parse_hca_report).
HCA_REPORT = (
    "echo '### kiln ibstat'; "
    "if command -v ibstat >/dev/null 2>&1; then ibstat 2>&1; else echo '### kiln ibstat missing'; "
    "fi; "
    "for d in /sys/class/infiniband/*; do [ -e \"$d\" ] || continue; "
    "echo \"### kiln sysfs ${d##*/}\"; "
    "printf 'pci:%s\\n' \"$(basename \"$(readlink -f \"$d/device\")\")\"; "
    "printf 'board_id:%s\\n' \"$(cat \"$d/board_id\" 2>/dev/null)\"; "
    "printf 'current_link_width:%s\\n' \"$(cat \"$d/device/current_link_width\" 2>/dev/null)\"; "
    "printf 'current_link_speed:%s\\n' \"$(cat \"$d/device/current_link_speed\" 2>/dev/null)\"; "
    "for n in \"$d\"/device/net/*; do [ -e \"$n\" ] && printf 'netdev:%s\\n' \"${n##*/}\"; "
    "done; done; "
    "echo '### kiln ip'; ip -j addr show 2>/dev/null || echo '[]'; "
    "if command -v mlxconfig >/dev/null 2>&1; then "
    "for c in $( (ibstat -l 2>/dev/null; ls /sys/class/infiniband 2>/dev/null) | sort -u); do "
    "echo \"### kiln mlxconfig $c\"; mlxconfig -d \"$c\" -e q 2>&1; done; "
    "else echo '### kiln mlxconfig missing'; fi; "
    "echo '### kiln modules'; "
    "{ cut -d' ' -f1 /proc/modules 2>/dev/null; "
    f"for m in {' '.join(MODULES)}; do "
    "[ \"$(cat /sys/module/$m/initstate 2>/dev/null)\" = live ] && echo $m; done; } "
    "| grep -x " + " ".join(f"-e {m}" for m in MODULES) + " | sort -u; "
    "echo '### kiln os'; (. /etc/os-release 2>/dev/null && echo \"$ID\"); true"
)


class HcaReport(FactBase):
    """Every HCA as the stage needs it, in one command: ibstat, sysfs (PSID, PCI address and
    link width, netdev), `ip -j addr`, `mlxconfig -e q` per card, the loaded modules and the
    OS. See parsers.parse_hca_report for what `process` returns."""

    def command(self) -> str:
        return HCA_REPORT

    def process(self, output: list[str]) -> dict[str, Any]:
        return parse_fact_output(parse_hca_report, output)


class MlxFwResetQuery(FactBase):
    """Whether `mlxfwreset` can activate new settings on one card without a reboot
    (parsers.parse_mlxfwreset_query); supported False where the tool is not installed."""

    def command(self, device: str) -> str:
        return f"mlxfwreset -d {shlex.quote(device)} q 2>&1 || true"

    def process(self, output: list[str]) -> dict[str, Any]:
        return parse_fact_output(parse_mlxfwreset_query, output)

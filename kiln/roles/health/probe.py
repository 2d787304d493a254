"""The health read: everything the single-node checks look at, in one command per node.

The sections below run one after another in one shell, each under `timeout` (the manifest's
`health.timeouts`), framed by kiln.core.sections; a section that hangs or fails is that
section's problem alone. Nothing is written on the node (a preview may run it). Parsing
happens on the controller (`split_sections`, then the tools' parsers in the checks).
"""

from __future__ import annotations

import shlex

from pyinfra.api import FactBase

from kiln.core.manifest import Health
from kiln.core.sections import Section, SectionOutput, script, split_sections
from kiln.roles.infiniband.facts import HCA_REPORT

__all__ = ["HealthRead", "Section", "SectionOutput", "script", "sections", "split_sections"]


def sections(health: Health, df_paths: list[str]) -> list[Section]:
    """The read, in order, with each section's time limit from the manifest."""
    read, limits = health.timeouts.read_s, health.timeouts
    host = health.host
    out = [
        Section("boot_id", "cat /proc/sys/kernel/random/boot_id", read),
        Section("nvidia_smi", "nvidia-smi -q", read),
        # -s (state, speed) and -e (error counters) in one section: parse_nvlink reads both.
        Section("nvlink", "nvidia-smi nvlink -s && nvidia-smi nvlink -e", read),
        Section("fabricmanager", "systemctl is-active nvidia-fabricmanager", read),
        Section("dmesg", "dmesg", read),
        Section("hca", HCA_REPORT, read),
        Section("cpu", "grep -E '^(processor|physical id|model name)[[:space:]]*:' /proc/cpuinfo",
                read),
        Section("memory", "grep -E '^(MemTotal|SwapTotal):' /proc/meminfo", read),
        Section("swaps", "cat /proc/swaps", read),
        Section("nvme", "for d in /sys/class/nvme/nvme*; do [ -e \"$d\" ] || continue; "
                "printf '%s\\t%s\\t%s\\n' \"${d##*/}\" \"$(cat \"$d/model\" 2>/dev/null)\" "
                "\"$(cat \"$d/state\" 2>/dev/null)\"; done; true", read),
        Section("df", "df -P -B1 " + " ".join(shlex.quote(p) for p in df_paths), read),
        Section("time", "if command -v chronyc >/dev/null 2>&1; then chronyc -n tracking; "
                "else timedatectl show -p NTPSynchronized; fi", read),
        Section("dcgm", f"dcgmi diag -r {health.dcgmi_diag_level} -j", limits.dcgm_s),
    ]
    if host.container_runtime == "docker":
        out.append(Section("container", "docker run --rm --gpus all "
                           f"{shlex.quote(host.container_image)} nvidia-smi -L",
                           limits.container_s))
    return out


class HealthRead(FactBase):
    """The whole health read of one node (see the module docstring), as printed: the
    operation splits it into sections with their time limits (split_sections), the checks
    parse each."""

    def command(self, health: Health, df_paths: list[str]) -> str:
        return script(sections(health, df_paths))

    def process(self, output: list[str]) -> str:
        return "\n".join(output)

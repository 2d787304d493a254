"""Facts that read the GPUs through nvidia-smi; parsing lives in roles.nvidia.parsers."""

from __future__ import annotations

import shlex
from typing import Any

from pyinfra.api import FactBase

from kiln.core.parsing import parse_fact_output
from kiln.roles.nvidia.parsers import (
    parse_driver_state,
    parse_nvidia_smi_csv,
    parse_nvidia_smi_q,
    parse_nvlink,
)


class NvidiaSmiQuery(FactBase):
    """`nvidia-smi -q` as a dict; see parse_nvidia_smi_q for the keys."""

    def command(self) -> str:
        return "nvidia-smi -q"

    def requires_command(self) -> str:
        return "nvidia-smi"

    def process(self, output: list[str]) -> dict[str, Any]:
        return parse_fact_output(parse_nvidia_smi_q, output)


class NvidiaSmiCsv(FactBase):
    """One dict per GPU for the given `--query-gpu` fields (header kept, units dropped)."""

    default = list

    def command(self, fields: list[str] | tuple[str, ...]) -> str:
        query = ",".join(fields)
        return f"nvidia-smi --query-gpu={shlex.quote(query)} --format=csv,nounits"

    def requires_command(self, fields: list[str] | tuple[str, ...]) -> str:
        return "nvidia-smi"

    def process(self, output: list[str]) -> list[dict[str, Any]]:
        return parse_fact_output(parse_nvidia_smi_csv, output)


class NvlinkStatus(FactBase):
    """Per GPU, per NVLink: active, speed (`nvidia-smi nvlink -s`)."""

    default = list

    def command(self) -> str:
        return "nvidia-smi nvlink -s"

    def requires_command(self) -> str:
        return "nvidia-smi"

    def process(self, output: list[str]) -> list[dict[str, Any]]:
        return parse_fact_output(parse_nvlink, output)


class NvlinkErrors(FactBase):
    """Per GPU, per NVLink: error counters (`nvidia-smi nvlink -e`)."""

    default = list

    def command(self) -> str:
        return "nvidia-smi nvlink -e"

    def requires_command(self) -> str:
        return "nvidia-smi"

    def process(self, output: list[str]) -> list[dict[str, Any]]:
        return parse_fact_output(parse_nvlink, output)


class NvidiaDriverState(FactBase):
    """Which NVIDIA driver runs: the kernel module (sysfs, /proc, this boot's kernel log) and
    what nvidia-smi says, mismatch included; see parse_driver_state for the keys."""

    def command(self) -> str:
        return (
            "echo '== sysfs'; cat /sys/module/nvidia/version 2>/dev/null; "
            "echo '== proc'; cat /proc/driver/nvidia/version 2>/dev/null; "
            "echo '== kernel-log'; dmesg 2>/dev/null | grep 'NVRM: loading NVIDIA UNIX' "
            "| tail -n 1; "
            "echo '== nvidia-smi'; if command -v nvidia-smi >/dev/null 2>&1; then "
            "nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>&1; "
            "echo \"== exit $?\"; else echo '== exit missing'; fi"
        )

    def process(self, output: list[str]) -> dict[str, Any]:
        return parse_fact_output(parse_driver_state, output)


class NvidiaDeviceUsers(FactBase):
    """Processes holding /dev/nvidia* open: [{"pid": int, "command": str}]."""

    default = list

    def command(self) -> str:
        return (
            "for p in /proc/[0-9]*; do "
            "if ls -l \"$p/fd\" 2>/dev/null | grep -q ' /dev/nvidia'; then "
            "echo \"${p#/proc/} $(cat \"$p/comm\" 2>/dev/null)\"; fi; done; true"
        )

    def process(self, output: list[str]) -> list[dict[str, Any]]:
        users = []
        for line in output:
            pid, _, command = line.strip().partition(" ")
            if pid.isdigit():
                users.append({"pid": int(pid), "command": command})
        return users


class LoadedNvidiaModules(FactBase):
    """NVIDIA kernel modules loaded now (/proc/modules), in the order listed there."""

    default = list

    def command(self) -> str:
        return "grep -E '^nvidia' /proc/modules 2>/dev/null | cut -d' ' -f1; true"

    def process(self, output: list[str]) -> list[str]:
        return [line.strip() for line in output if line.strip()]

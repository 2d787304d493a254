"""Facts that read the GPUs through nvidia-smi; parsing lives in roles.nvidia.parsers."""

from __future__ import annotations

import shlex
from typing import Any

from pyinfra.api import FactBase

from roles.nvidia.parsers import parse_nvidia_smi_csv, parse_nvidia_smi_q, parse_nvlink
from roles.parsing import parse_fact_output


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

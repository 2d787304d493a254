"""Facts that read NIC firmware and configuration; parsing lives in roles.firmware.parsers."""

from __future__ import annotations

import shlex
from typing import Any

from pyinfra.api import FactBase

from kiln.core.parsing import parse_fact_output
from kiln.roles.firmware.parsers import parse_mlxconfig, parse_mlxfwmanager


class MlxFwManagerQuery(FactBase):
    """Each Mellanox device's firmware versions and update status (`mlxfwmanager --query`)."""

    default = list

    def command(self) -> str:
        # mlxfwmanager exits non-zero when no device is found; its stdout still says so.
        return "mlxfwmanager --query 2>&1 || true"

    def requires_command(self) -> str:
        return "mlxfwmanager"

    def process(self, output: list[str]) -> list[dict[str, Any]]:
        return parse_fact_output(parse_mlxfwmanager, output)


class MlxConfigQuery(FactBase):
    """One device's configuration (`mlxconfig -d DEV -e q`): default, current and next boot."""

    def command(self, device: str) -> str:
        return f"mlxconfig -d {shlex.quote(device)} -e q"

    def requires_command(self, device: str) -> str:
        return "mlxconfig"

    def process(self, output: list[str]) -> dict[str, Any]:
        devices = parse_fact_output(parse_mlxconfig, output)
        return devices[0]

"""Facts for node health: dcgmi diag and the kernel log; parsing lives in
roles.health.parsers."""

from __future__ import annotations

from typing import Any

from pyinfra.api import FactBase

from kiln.core.parsing import parse_fact_output
from kiln.roles.health.parsers import parse_dcgmi_diag, parse_kernel_log


class DcgmiDiag(FactBase):
    """`dcgmi diag -r LEVEL -j`, parsed. Runs the diagnostic: level 3 takes ~30 minutes."""

    def command(self, level: int = 1) -> str:
        if int(level) not in (1, 2, 3, 4):
            raise ValueError(f"dcgmi diag level must be 1-4, got {level!r}")
        # dcgmi exits non-zero when a test fails; the JSON on stdout says which.
        return f"dcgmi diag -r {int(level)} -j || true"

    def requires_command(self, level: int = 1) -> str:
        return "dcgmi"

    def process(self, output: list[str]) -> dict[str, Any]:
        return parse_fact_output(parse_dcgmi_diag, output)


class KernelLog(FactBase):
    """Xid and SXid events in the kernel ring buffer (needs root: use _sudo)."""

    def command(self) -> str:
        return "dmesg --time-format iso"

    def requires_command(self) -> str:
        return "dmesg"

    def process(self, output: list[str]) -> dict[str, Any]:
        return parse_fact_output(parse_kernel_log, output)

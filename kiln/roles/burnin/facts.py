"""Burn-in results read as facts; parsing lives in roles.burnin.parsers.

Burn-in runs are launched by the burn-in operations; these facts read a finished run's
captured output (the log path the operation wrote), so a re-run of the deploy can see the
last result without running the benchmark again.
"""

from __future__ import annotations

import shlex
from typing import Any

from pyinfra.api import FactBase

from kiln.core.parsing import parse_fact_output
from kiln.roles.burnin.parsers import parse_ib_write_bw, parse_nccl_tests


class NcclTestsLog(FactBase):
    """A captured nccl-tests log (mpirun/srun prefixes allowed), parsed; None if absent."""

    def command(self, path: str) -> str:
        return f"cat {shlex.quote(path)} 2>/dev/null || true"

    def process(self, output: list[str]) -> dict[str, Any]:
        return parse_fact_output(parse_nccl_tests, output)


class IbWriteBwLog(FactBase):
    """A captured ib_write_bw client log, parsed; None if absent."""

    def command(self, path: str) -> str:
        return f"cat {shlex.quote(path)} 2>/dev/null || true"

    def process(self, output: list[str]) -> dict[str, Any]:
        return parse_fact_output(parse_ib_write_bw, output)

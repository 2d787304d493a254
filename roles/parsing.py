"""`kiln parse TOOL FILE`: the roles' parsers, reachable from the command line.

Each TOOL names a parser that lives with the role whose facts use it. Parsers take the
tool's text and return plain data (dicts, lists); unparseable input raises ParseError
naming the line.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from roles.errors import KilnError


class ParseError(KilnError):
    """Input that is not what the tool prints; the message names the line."""


def _registry() -> dict[str, Callable[[str], Any]]:
    # Imported here, not at module top: the role modules import ParseError from this one.
    from roles.burnin.parsers import parse_ib_write_bw, parse_nccl_tests
    from roles.firmware.parsers import parse_mlxconfig, parse_mlxfwmanager
    from roles.health.parsers import parse_dcgmi_diag, parse_kernel_log
    from roles.infiniband.parsers import parse_ibstat, parse_sysfs_infiniband
    from roles.nvidia.parsers import parse_nvidia_smi_csv, parse_nvidia_smi_q, parse_nvlink

    return {
        "nvidia-smi-q": parse_nvidia_smi_q,
        "nvidia-smi-csv": parse_nvidia_smi_csv,
        "nvidia-smi-nvlink": parse_nvlink,
        "ibstat": parse_ibstat,
        "ib-sysfs": parse_sysfs_infiniband,
        "nccl-tests": parse_nccl_tests,
        "ib-write-bw": parse_ib_write_bw,
        "mlxfwmanager": parse_mlxfwmanager,
        "mlxconfig": parse_mlxconfig,
        "dcgmi-diag": parse_dcgmi_diag,
        "dmesg": parse_kernel_log,
    }


def parse_file(tool: str, path: Path) -> str:
    parsers = _registry()
    if tool not in parsers:
        known = ", ".join(sorted(parsers)) or "none yet"
        raise KilnError(f"unknown TOOL {tool!r} (known: {known})")
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise KilnError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        result = parsers[tool](text)
    except ParseError as exc:
        raise KilnError(f"{path}: {exc}") from None
    return json.dumps(result, indent=2, sort_keys=True, default=str)


def parse_fact_output(parser: Callable[[str], Any], output: list[str]) -> Any:
    """A fact's process(): run `parser` on pyinfra's output lines; a parse failure becomes
    pyinfra's FactProcessError, so the host fails with the parser's message (the line)."""
    from pyinfra.api.exceptions import FactProcessError

    try:
        return parser("\n".join(output))
    except ParseError as exc:
        raise FactProcessError(str(exc)) from None

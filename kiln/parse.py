"""`kiln parse TOOL FILE`: the roles' parsers, reachable from the command line.

Each TOOL names a parser that lives with the role whose facts use it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kiln.core.errors import KilnError
from kiln.core.parsing import ParseError
from kiln.roles.burnin.parsers import parse_ib_write_bw, parse_nccl_tests
from kiln.roles.firmware.parsers import parse_mlxconfig, parse_mlxfwmanager
from kiln.roles.health.parsers import parse_dcgmi_diag, parse_kernel_log
from kiln.roles.infiniband.parsers import parse_ibstat, parse_sysfs_infiniband
from kiln.roles.nvidia.parsers import parse_nvidia_smi_csv, parse_nvidia_smi_q, parse_nvlink

PARSERS: dict[str, Callable[[str], Any]] = {
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
    if tool not in PARSERS:
        known = ", ".join(sorted(PARSERS))
        raise KilnError(f"unknown TOOL {tool!r} (known: {known})")
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise KilnError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        result = PARSERS[tool](text)
    except ParseError as exc:
        raise KilnError(f"{path}: {exc}") from None
    return json.dumps(result, indent=2, sort_keys=True, default=str)

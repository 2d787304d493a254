"""What the lab needs from the machine it runs on: root, and a few tools (named by package)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence

# Tool -> the Debian package that provides it (all listed in lab/host-packages.txt).
TOOLS = {
    "ip": "iproute2",
    "unshare": "util-linux",
    "nsenter": "util-linux",
    "pivot_root": "util-linux",
    "mount": "mount",
    "umount": "mount",
    "debootstrap": "debootstrap",
    "ssh-keygen": "openssh-client",
    "ssh": "openssh-client",
    "chronyd": "chrony",
    "nft": "nftables",
    "ipmitool": "ipmitool",
}


class LabError(Exception):
    """Something the lab cannot do, said so a person can fix it."""


def require_root() -> None:
    if os.geteuid() != 0:
        raise LabError(
            "the lab needs root (network namespaces, mounts, bridges): run as root, "
            "e.g. sudo .venv/bin/kiln lab ..."
        )


def require_tools(tools: Sequence[str]) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        packages = sorted({TOOLS.get(tool, tool) for tool in missing})
        raise LabError(
            f"missing tool(s): {', '.join(missing)}; install with: "
            f"apt-get install {' '.join(packages)} (or: make host-packages)"
        )


def run(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure (if check) raise a LabError showing the command and stderr."""
    result = subprocess.run(list(argv), capture_output=True, text=True)
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()
        raise LabError(f"`{' '.join(argv)}` failed ({result.returncode}): {detail}")
    return result

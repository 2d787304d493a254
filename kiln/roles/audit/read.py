"""The audit read: everything the manifest pins, read from the node in one command.

One round trip per node (kiln.core.sections): the running kernel, every pinned package's
version and hold, `nvidia-smi -q` (driver, GPUs, VBIOS, InfoROM, PCIe), the HCAs
(`ibstat`, sysfs and `mlxconfig -e q` per card: the infiniband role's report) and
`mlxfwmanager --query` (ConnectX and transceiver firmware). Each part runs under its own
time limit; a part that fails or hangs leaves only its own values unread. Nothing is
written on the node. The BMC's firmware inventory and BIOS attributes are read on the
controller beside it (kiln.roles.audit.operations).
"""

from __future__ import annotations

import shlex

from pyinfra.api import FactBase

from kiln.core.manifest import Manifest
from kiln.core.sections import Section, script
from kiln.roles.infiniband.facts import HCA_REPORT

# dpkg-query prints a pinned package that is not installed on stderr, one line each.
_NOT_INSTALLED = "dpkg-query: no packages found matching "
PACKAGE_FORMAT = r"${Package}\t${Version}\t${db:Status-Abbrev}\n"


def sections(manifest: Manifest) -> list[Section]:
    limit = manifest.health.timeouts.read_s
    names = " ".join(shlex.quote(name) for name in sorted(manifest.pinned_packages()))
    return [
        # /proc rather than uname(2): the same value on a machine, and the lab can show the
        # kernel its node booted (the lab's nodes share the host's kernel).
        Section("kernel", "cat /proc/sys/kernel/osrelease", limit),
        Section("packages", f"dpkg-query -W -f='{PACKAGE_FORMAT}' {names}", limit),
        Section("nvidia_smi", "nvidia-smi -q", limit),
        Section("hca", HCA_REPORT, limit),
        Section("mlxfwmanager", "mlxfwmanager --query", limit),
    ]


def not_installed(text: str) -> tuple[str, list[str]]:
    """dpkg-query's section split into what it printed for installed packages and the names
    it says are not installed."""
    rows, missing = [], []
    for line in text.splitlines():
        if line.startswith(_NOT_INSTALLED):
            missing.append(line[len(_NOT_INSTALLED):].strip())
        else:
            rows.append(line)
    return "\n".join(rows), missing


class AuditRead(FactBase):
    """The whole audit read of one node, as printed (split by kiln.core.sections)."""

    def command(self, manifest: Manifest) -> str:
        return script(sections(manifest))

    def process(self, output: list[str]) -> str:
        return "\n".join(output)

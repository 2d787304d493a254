"""The health read: everything the single-node checks look at, in one command per node.

One round trip per node: the sections below run one after another in one shell, each under
`timeout` (the manifest's `health.timeouts`), each framed by marker lines, so a section that
hangs or fails is that section's problem alone: its checks are UNKNOWN, the others judge
what the rest printed. Nothing is written on the node (no temporary file: a preview may run
it). Parsing happens on the controller (`split_sections` here, the tools' parsers in the
checks).

    @@kiln-health begin NAME
    ...what the section printed (stdout and stderr)...
    @@kiln-health end NAME rc=N
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Any

from pyinfra.api import FactBase

from kiln.core.manifest import Health
from kiln.core.parsing import ParseError
from kiln.roles.infiniband.facts import HCA_REPORT

MARK = "@@kiln-health"
_BEGIN = re.compile(rf"^{MARK} begin (\S+)$")
_END = re.compile(rf"^{MARK} end (\S+) rc=(\d+)$")

# timeout(1)'s own exit statuses: 124 the command ran past its time; 137 it ignored TERM and
# was killed (-k). 126/127: the command could not run / was not found.
TIMED_OUT = (124, 137)
NOT_FOUND = 127


@dataclass(frozen=True)
class Section:
    name: str
    command: str
    timeout_s: int


@dataclass(frozen=True)
class SectionOutput:
    """What one section printed and how it ended."""

    name: str
    rc: int | None  # None: the section never finished (the read was cut short)
    text: str
    timeout_s: int | None = None

    @property
    def timed_out(self) -> bool:
        return self.rc in TIMED_OUT

    @property
    def missing_tool(self) -> bool:
        return self.rc == NOT_FOUND

    def why_unreadable(self) -> str | None:
        """Why this section says nothing to judge, or None when it ran."""
        if self.rc is None:
            return f"the read of {self.name} was cut short (no end marker)"
        if self.timed_out:
            return f"{self.name} did not answer within {self.timeout_s or '?'} s (timed out)"
        if self.missing_tool:
            return f"{self.name}: command not found"
        return None


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


def script(parts: list[Section]) -> str:
    """One shell command running every section under its own time limit."""
    lines = []
    for part in parts:
        lines.append(
            f"echo '{MARK} begin {part.name}'; "
            f"timeout -k 5 {part.timeout_s} sh -c {shlex.quote(part.command)} </dev/null 2>&1; "
            f"rc=$?; echo; echo \"{MARK} end {part.name} rc=$rc\""
        )
    return "; ".join(lines) + "; true"


def split_sections(text: str, timeouts: dict[str, int] | None = None) -> dict[str, SectionOutput]:
    """The sections of a health read, by name. A section cut short (no end marker: the
    connection dropped) is kept with rc None; text outside a section is an error."""
    timeouts = timeouts or {}
    found: dict[str, SectionOutput] = {}
    name: str | None = None
    body: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        begin, end = _BEGIN.match(line), _END.match(line)
        if begin:
            if name is not None:
                found[name] = SectionOutput(name, None, _body(body), timeouts.get(name))
            name, body = begin.group(1), []
        elif end:
            if end.group(1) != name:
                raise ParseError(f"line {number}: end of section {end.group(1)!r} inside "
                                 f"{name!r}")
            found[name] = SectionOutput(name, int(end.group(2)), _body(body), timeouts.get(name))
            name, body = None, []
        elif name is not None:
            body.append(line)
        elif line.strip():
            raise ParseError(f"line {number}: output outside any health section: {line[:100]!r}")
    if name is not None:
        found[name] = SectionOutput(name, None, _body(body), timeouts.get(name))
    return found


def _body(lines: list[str]) -> str:
    # The script prints one empty line before each end marker (a section's last line may
    # lack its newline): drop it, keep the section's own text as printed.
    if lines and not lines[-1].strip():
        lines = lines[:-1]
    return "\n".join(lines)


class HealthRead(FactBase):
    """The whole health read of one node (see the module docstring); process() splits it
    into sections, the checks parse each."""

    def command(self, health: Health, df_paths: list[str]) -> str:
        return script(sections(health, df_paths))

    def process(self, output: list[str]) -> dict[str, Any]:
        try:
            return {"sections": split_sections("\n".join(output))}
        except ParseError as exc:
            from pyinfra.api.exceptions import FactProcessError

            raise FactProcessError(str(exc)) from None

"""One command, several reads: each part under its own `timeout`, framed by marker lines, so
a part that hangs or fails is that part's problem alone (its checks are UNKNOWN; the others
judge what the rest printed). Nothing is written on the node. Used by every stage that reads
or runs several things on a node in one round trip (health, burn-in).

    @@kiln-read begin NAME
    ...what the part printed (stdout and stderr)...
    @@kiln-read end NAME rc=N
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from kiln.core.parsing import ParseError

MARK = "@@kiln-read"
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

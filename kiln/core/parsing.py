"""What every role's parsers share: the error they raise and how a fact runs one.

Parsers take a tool's text and return plain data (dicts, lists); unparseable input raises
ParseError naming the line. `kiln parse` (kiln/parse.py) reaches them from the command line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kiln.core.errors import KilnError


class ParseError(KilnError):
    """Input that is not what the tool prints; the message names the line."""


class LauncherError(ParseError):
    """The launcher (`mpirun`, `srun`) failed or aborted the job: its own error text is in
    the output, so the tool's report is missing or cut short. Not the tool's fault, and not
    unreadable output: `launcher` names which one, `line` where it said so, and `partial`
    holds what the tool had printed before (the parser's result so far, or None)."""

    def __init__(self, launcher: str, line: int, text: str, partial: Any = None):
        self.launcher, self.line, self.text, self.partial = launcher, line, text, partial
        super().__init__(f"line {line}: {launcher} failed: {text}")


def parse_fact_output(parser: Callable[[str], Any], output: list[str]) -> Any:
    """A fact's process(): run `parser` on pyinfra's output lines; a parse failure becomes
    pyinfra's FactProcessError, so the host fails with the parser's message (the line)."""
    from pyinfra.api.exceptions import FactProcessError

    try:
        return parser("\n".join(output))
    except ParseError as exc:
        raise FactProcessError(str(exc)) from None

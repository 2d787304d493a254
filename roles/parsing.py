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
    # Filled in as each role's parser lands (issue "Lab, part 1", parsers section).
    return {}


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

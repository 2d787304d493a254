"""Reading the human-edited YAML files kiln takes as input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kiln.core.errors import ValidationFailed


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """Parse `path` as YAML whose top level is a mapping; errors name the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValidationFailed([f"{path}: no such file"]) from None
    except OSError as exc:
        raise ValidationFailed([f"{path}: cannot read: {exc.strerror}"]) from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ValidationFailed([f"{path}: {where}not valid YAML: {problem}"]) from None
    if not isinstance(document, dict):
        kind = "empty" if document is None else f"a {type(document).__name__}"
        raise ValidationFailed([f"{path}: expected a mapping at the top level, found {kind}"])
    return document

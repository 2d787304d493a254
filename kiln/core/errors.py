"""Errors kiln raises for bad input: each names the file, field, node or endpoint."""

from __future__ import annotations

from collections.abc import Iterable


class KilnError(Exception):
    """An error a person can act on; its message says where and what."""


class ValidationFailed(KilnError):
    """Input failed validation. Carries every problem found, not just the first."""

    def __init__(self, problems: Iterable[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def pydantic_problems(source: str, error: object) -> list[str]:
    """Format a pydantic ValidationError as `source: dotted.path: message` lines."""
    problems = []
    for item in error.errors():  # type: ignore[attr-defined]
        path = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "missing":
            message = "field required"
        elif item["type"] == "extra_forbidden":
            message = "unknown field (not part of the schema; misspelt?)"
        else:
            message = message[:1].lower() + message[1:]
        problems.append(f"{source}: {path}: {message}")
    return problems

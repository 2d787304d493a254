"""A role's settings from pyinfra host data: one pydantic model, one data key per field.

Every problem is reported at once, each naming the host-data key (and the item inside it)
that is wrong, so a bad group-data file is fixed in one pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from kiln.core.errors import ValidationFailed

Model = TypeVar("Model", bound=BaseModel)


def settings_from_host_data(model: type[Model], data: Any, key_of: Callable[[str], str],
                            defaults: dict[str, Any] | None = None) -> Model:
    """`model` from host data (anything with .get): field F is read from key `key_of(F)`;
    `defaults` fill the fields the data leaves unset."""
    values = dict(defaults or {})
    for field in model.model_fields:
        value = data.get(key_of(field))
        if value is not None:
            values[field] = value
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise ValidationFailed(problems_of(exc, key_of)) from None


def problems_of(exc: ValidationError, key_of: Callable[[str], str]) -> list[str]:
    """`host data KEY[0].item: message`, one per error."""
    problems = []
    for item in exc.errors():
        field, *rest = [str(part) for part in item["loc"]] or ["?"]
        where = key_of(field) + "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in rest)
        if item["type"] == "missing":
            message = "is not set"
        elif item["type"] == "extra_forbidden":
            message = "unknown field (misspelt?)"
        else:
            message = item["msg"].removeprefix("Value error, ")
        problems.append(f"host data {where}: {message}")
    return problems

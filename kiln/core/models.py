"""The base of every pydantic model kiln reads from a person's file or group data."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """Unknown keys are errors: a misspelt key must not silently fall back to a default.
    Frozen: what was validated is what is used."""

    model_config = ConfigDict(extra="forbid", frozen=True)

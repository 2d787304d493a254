"""The jinja2 templates the roles render (templates/<role>/...), strict about missing values."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from kiln.core.paths import TEMPLATES_DIR


@lru_cache(maxsize=1)
def _environment() -> Environment:
    return Environment(
        loader=FileSystemLoader(str(TEMPLATES_DIR)),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )


def render(name: str, **values: Any) -> str:
    """Render templates/<name> with `values`; a value the template needs and lacks is an
    error, never an empty string in a config file."""
    return _environment().get_template(name).render(**values)

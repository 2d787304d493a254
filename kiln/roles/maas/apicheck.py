"""Check requests kiln's MAAS client sent against MAAS's own OpenAPI document.

MAAS's OpenAPI document (`/MAAS/api/2.0/openapi.yaml`, generated from its handlers) writes an
operation as a path segment, `/machines/{system_id}/op-deploy`, and has no `servers`; on the
wire the same call is `POST /MAAS/api/2.0/machines/<id>/?op=deploy`. `spec_path` maps one to
the other; the rest is openapi-core's own validation (path, query parameters, body schema).

One adaptation, stated: a multipart/form-data part is text on the wire, so a field the
document types `boolean` or `integer` arrives as "true" or "1"; MAAS's forms read it as such.
The validator casts form fields by their schema type with openapi-core's own casters (the
ones it uses for query strings) before checking the schema, so "maybe" for a boolean still
fails. openapi-core is a test dependency: imported only when a validator is made.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from kiln.roles.maas.client import API_PATH, SentRequest


@dataclass
class RequestRecorder:
    """`on_request` for MAASClient: keeps every attempt the client put on the wire."""

    requests: list[SentRequest] = field(default_factory=list)

    def __call__(self, sent: SentRequest) -> None:
        self.requests.append(sent)

    def calls(self) -> list[str]:
        """`POST machines/abc123/?op=deploy` per request: what a test reads."""
        return [describe(sent) for sent in self.requests]


def split_api_url(url: str) -> tuple[str, str, list[tuple[str, str]]]:
    """(host URL, path under the API root, query without `op`) and the op folded into
    the path as MAAS's OpenAPI document writes it."""
    parts = urlsplit(url)
    marker = "/" + API_PATH
    if marker not in parts.path:
        raise ValueError(f"{url}: not under a MAAS API root (…/{API_PATH})")
    path = "/" + parts.path.split(marker, 1)[1]
    query = parse_qsl(parts.query, keep_blank_values=True)
    ops = [value for key, value in query if key == "op"]
    if len(ops) > 1:
        raise ValueError(f"{url}: more than one op")
    if ops:
        path = path + ("" if path.endswith("/") else "/") + f"op-{ops[0]}"
    return f"{parts.scheme}://{parts.netloc}", path, [(k, v) for k, v in query if k != "op"]


def describe(sent: SentRequest) -> str:
    parts = urlsplit(sent.url)
    path = parts.path.split("/" + API_PATH, 1)[-1]
    return f"{sent.method} {path}" + (f"?{parts.query}" if parts.query else "")


class _OpenAPIRequest:
    """openapi-core's Request protocol over one SentRequest."""

    def __init__(self, sent: SentRequest):
        from openapi_core.datatypes import RequestParameters
        from werkzeug.datastructures import Headers, ImmutableMultiDict

        self.host_url, self.path, query = split_api_url(sent.url)
        self.method = sent.method.lower()
        self.parameters = RequestParameters(
            query=ImmutableMultiDict(query), header=Headers({}), cookie=ImmutableMultiDict()
        )
        self.content_type = sent.content_type
        self.body = sent.body

    @property
    def full_url_pattern(self) -> str:
        return self.host_url + self.path


def _form_casting_validator() -> type:
    from openapi_core.validation.request.validators import V31RequestValidator

    class FormCastingRequestValidator(V31RequestValidator):
        def _get_content_and_schema(self, raw: bytes, content: Any,
                                    mimetype: str | None = None) -> tuple[Any, Any]:
            value, schema = self._get_content_schema_value_and_schema(raw, content, mimetype)
            if schema is None:
                return value, None
            if (mimetype or "").startswith("multipart/form-data") and isinstance(value, dict):
                caster = self.schema_casters_factory.create(self.spec, schema)
                value = caster.cast(dict(value))
            self._validate_schema(schema, value)
            return value, schema

    return FormCastingRequestValidator


class SpecValidator:
    """Validates SentRequests against MAAS's OpenAPI document (loaded once: it is large)."""

    def __init__(self, spec_file: Path | str):
        import yaml
        from openapi_core import Config, OpenAPI

        path = Path(spec_file)
        try:
            loader = yaml.CSafeLoader
        except AttributeError:  # PyYAML without libyaml
            loader = yaml.SafeLoader
        with path.open() as handle:
            document = yaml.load(handle, Loader=loader)
        self.source = str(path)
        self._validator_class = _form_casting_validator()
        # The document is MAAS's own; checking it against the OpenAPI meta-schema takes
        # seconds and is not what these tests are about.
        self._openapi = OpenAPI.from_dict(document, config=Config(spec_validator_cls=None))

    def problems(self, sent: SentRequest) -> list[str]:
        """Every way the request departs from the document; empty when it conforms."""
        try:
            request = _OpenAPIRequest(sent)
        except ValueError as exc:
            return [f"{describe(sent)}: {exc}"]
        validator = self._validator_class(self._openapi.spec)
        found = []
        for error in validator.iter_errors(request):
            detail = "; ".join(str(e) for e in getattr(error, "schema_errors", ()) or ())
            cause = error.__cause__
            if not detail and cause is not None:
                detail = "; ".join(
                    str(e.message) for e in getattr(cause, "schema_errors", ()) or ()
                ) or str(cause)
            text = f"{describe(sent)}: {type(error).__name__}: {error}"
            found.append(text + (f" ({detail})" if detail and detail not in text else ""))
        return found

    def check_all(self, sent: Iterable[SentRequest]) -> list[str]:
        return [problem for request in sent for problem in self.problems(request)]

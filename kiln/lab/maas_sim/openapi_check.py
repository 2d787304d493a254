"""Check MAAS API requests against MAAS's own OpenAPI document, with openapi-core.

Used by the tests on the requests the simulator records (`<lab>/maas/requests.jsonl`, one
JSON object a line: method, path, query pairs, content_type, body_b64, status), so what a
client sends, kiln's MAAS client included, is held to MAAS's document and not only to the
simulator's reading of it. openapi-core is a test dependency; it is imported here lazily.

Two adaptations, both about how the document is read, not what it says:
- MAAS's operations are `?op=NAME` on the wire and `/op-NAME` paths in the document (MAAS
  routes both); a request is checked under its `/op-NAME` path, with the API prefix
  `/MAAS/api/2.0` removed (the document has no `servers`).
- A multipart/form-data field is text on the wire (RFC 7578); MAAS parses booleans and
  integers from it. openapi-core checks multipart fields only as text, against schemas of
  type boolean or integer, so every such property gets the form-style `encoding` the
  document leaves implicit, and fields reach its casters as str (its own multipart reader
  hands them bytes).
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

API_PREFIX = "/MAAS/api/2.0"
_DETAIL = 600  # characters of openapi-core's explanation kept in a message
# Used by the tests, from a checkout: the document is a test fixture (with its licence).
SPEC = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "specs" / (
    "maas-api-2.0-openapi.yaml")


class SpecViolation(AssertionError):
    pass


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: list[tuple[str, str]]
    content_type: str | None
    body: bytes
    status: int | None = None

    @classmethod
    def from_record(cls, entry: dict[str, Any]) -> RecordedRequest:
        return cls(
            method=entry["method"],
            path=entry["path"],
            query=[(k, v) for k, v in entry.get("query", [])],
            content_type=entry.get("content_type"),
            body=base64.b64decode(entry.get("body_b64", "")),
            status=entry.get("status"),
        )

    def describe(self) -> str:
        query = f"?{urlencode(self.query)}" if self.query else ""
        return f"{self.method} {self.path}{query}"


def read_requests(path: Path) -> list[RecordedRequest]:
    lines = Path(path).read_text().splitlines()
    return [RecordedRequest.from_record(json.loads(line)) for line in lines if line.strip()]


def _form_fields(value: bytes, **parameters: str) -> Any:
    from werkzeug.datastructures import ImmutableMultiDict

    header = f'Content-Type: multipart/form-data; boundary="{parameters.get("boundary", "")}"'
    message = BytesParser(policy=HTTP).parsebytes(header.encode() + b"\r\n\r\n" + value)
    fields = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        fields.append((name, payload.decode("utf-8", errors="replace")))
    return ImmutableMultiDict(fields)


def _with_form_encodings(document: dict[str, Any]) -> dict[str, Any]:
    for item in document.get("paths", {}).values():
        for operation in item.values():
            if not isinstance(operation, dict):
                continue
            content = operation.get("requestBody", {}).get("content", {})
            media = content.get("multipart/form-data")
            if not media:
                continue
            properties = media.get("schema", {}).get("properties", {})
            typed = {name: {"style": "form", "explode": True}
                     for name, schema in properties.items()
                     if schema.get("type") in ("boolean", "integer", "number")}
            if typed:
                media["encoding"] = {**typed, **media.get("encoding", {})}
    return document


@cache
def _document(spec_path: str) -> dict[str, Any]:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(spec_path) as stream:
        return _with_form_encodings(yaml.load(stream, Loader=loader))


@cache
def _openapi(spec_path: str) -> Any:
    from openapi_core import Config, OpenAPI

    config = Config(extra_media_type_deserializers={"multipart/form-data": _form_fields})
    return OpenAPI.from_dict(_document(spec_path), config=config)


class _OpenAPIRequest:
    """openapi-core's Request protocol over a recorded request."""

    def __init__(self, recorded: RecordedRequest) -> None:
        from openapi_core.datatypes import RequestParameters
        from werkzeug.datastructures import Headers, ImmutableMultiDict

        path = recorded.path
        if not path.startswith(API_PREFIX + "/"):
            raise SpecViolation(f"{recorded.describe()}: not under {API_PREFIX}/")
        path = path[len(API_PREFIX):]
        query = list(recorded.query)
        op = next((v for k, v in query if k == "op"), None)
        if op is not None:
            path = f"{path}op-{op}"
            query = [(k, v) for k, v in query if k != "op"]
        self.host_url = "http://maas.invalid"
        self.path = path
        self.method = recorded.method.lower()
        self.content_type = recorded.content_type or ""
        self.body = recorded.body or None
        headers = Headers()
        if recorded.content_type:
            headers["Content-Type"] = recorded.content_type
        self.parameters = RequestParameters(query=ImmutableMultiDict(query), header=headers)

    @property
    def full_url_pattern(self) -> str:
        return self.host_url + self.path


def check_request(recorded: RecordedRequest, spec: Path = SPEC) -> None:
    """Raise SpecViolation naming the request when MAAS's document does not allow it."""
    api = _openapi(str(spec))
    try:
        api.validate_request(_OpenAPIRequest(recorded))
    except SpecViolation:
        raise
    except Exception as exc:
        cause = str(exc.__cause__ or exc)
        raise SpecViolation(f"{recorded.describe()}: {type(exc).__name__}: {cause[:_DETAIL]}"
                            ) from None


def check_requests(requests: list[RecordedRequest], spec: Path = SPEC) -> list[str]:
    """Every problem among `requests`, one line each (empty: all valid)."""
    problems = []
    for recorded in requests:
        try:
            check_request(recorded, spec)
        except SpecViolation as exc:
            problems.append(str(exc))
    return problems


class _OpenAPIResponse:
    def __init__(self, status: int, content_type: str, body: bytes) -> None:
        from werkzeug.datastructures import Headers

        self.status_code = status
        self.content_type = content_type
        self.data = body
        self.headers = Headers({"Content-Type": content_type})


def documented_statuses(recorded: RecordedRequest, spec: Path = SPEC) -> set[str]:
    """The response codes MAAS's document lists for the request's operation."""
    request = _OpenAPIRequest(recorded)
    for template, item in _document(str(spec))["paths"].items():
        pattern = re.sub(r"\\{[^}]+\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, request.path) and request.method in item:
            return {str(code) for code in item[request.method].get("responses", {})}
    return set()


def check_response(recorded: RecordedRequest, status: int, content_type: str, body: bytes,
                   spec: Path = SPEC) -> None:
    """Raise SpecViolation when the document lists `status` for the operation and the
    response does not match it (its content type and schema)."""
    api = _openapi(str(spec))
    try:
        api.validate_response(_OpenAPIRequest(recorded),
                              _OpenAPIResponse(status, content_type, body))
    except Exception as exc:
        cause = str(exc.__cause__ or exc)
        raise SpecViolation(f"{recorded.describe()} -> {status}: {type(exc).__name__}: "
                            f"{cause[:_DETAIL]}") from None

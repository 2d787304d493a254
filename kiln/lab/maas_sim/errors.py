"""MAAS's API errors: the status codes and bodies maasserver/exceptions.py produces."""

from __future__ import annotations

import json


class MaasApiError(Exception):
    """An error response: `status`, a text/plain body (MAASAPIException.make_http_response)."""

    status = 500

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> tuple[str, str]:
        return self.message, "text/plain; charset=utf-8"


class BadRequest(MaasApiError):  # MAASAPIBadRequest
    status = 400


class Forbidden(MaasApiError):  # MAASAPIForbidden / PermissionDenied
    status = 403


class NotFound(MaasApiError):  # Http404 from get_object_or_404
    status = 404


class MethodNotAllowed(MaasApiError):
    status = 405


class Conflict(MaasApiError):  # NodeStateViolation, NodesNotAvailable
    status = 409


class NotImplementedBySimulator(MaasApiError):
    """Real MAAS has this operation; the simulator does not (yet). Never a silent success."""

    status = 501


class Unavailable(MaasApiError):  # PowerProblem, ClusterUnavailable
    status = 503


class ValidationFailed(BadRequest):
    """MAASAPIValidationError: a form's errors, as JSON `{field: [messages]}`."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__(json.dumps(errors))
        self.errors = errors

    def body(self) -> tuple[str, str]:
        return json.dumps(self.errors), "application/json; charset=utf-8"


def invalid_choice(field: str, value: str, choices: list[str]) -> ValidationFailed:
    """MAAS's compose_invalid_choice_text wording (two spaces after the first sentence)."""
    listed = ", ".join(repr(c) for c in choices)
    return ValidationFailed(
        {field: [f"{value!r} is not a valid {field}.  It should be one of: {listed}."]}
    )

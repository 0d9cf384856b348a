"""The one exception tree of cascade-gateway, and the one place that maps it to HTTP.

    CascadeError
    ├── ConfigError                 bad YAML / settings, raised at start-up
    ├── ArtifactError               a model folder that is missing, tampered with, or mismatched
    ├── DataError                   a dataset line that cannot be used (file and line named)
    ├── RequestError                the client's fault, a 4xx; never reaches a model
    │   ├── InvalidJSON             400: the body is not JSON
    │   ├── PayloadTooLarge         413: the body is over ``limits.max_body_bytes``
    │   ├── UnsupportedMediaType    415: a body declared as something other than JSON
    │   ├── InvalidRequest          422: the body does not match the schema
    │   └── LimitExceeded           422: too many inputs, or a text too long
    └── ServiceError                ours, a 5xx; the message never leaks internals
        ├── Overloaded              503: a role's queue is full (back-pressure)
        └── ModelUnavailable        503: a role is not loaded or not answering

Every error that carries a limit carries the limit and the actual value, so the message can say both.
"""

from __future__ import annotations

from typing import Any


class CascadeError(Exception):
    """Base of every error this project raises on purpose."""

    error_type = "cascade_error"
    http_status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(CascadeError):
    error_type = "config_error"


class ArtifactError(CascadeError):
    error_type = "artifact_error"


class DataError(CascadeError):
    error_type = "data_error"

    def __init__(self, path: str, line: int, problem: str) -> None:
        super().__init__(f"{path}:{line}: {problem}")
        self.path = path
        self.line = line


class RequestError(CascadeError):
    error_type = "invalid_request"
    http_status = 422


class InvalidJSON(RequestError):
    error_type = "invalid_json"
    http_status = 400


class PayloadTooLarge(RequestError):
    error_type = "payload_too_large"
    http_status = 413

    def __init__(self, limit: int, actual: int) -> None:
        super().__init__(f"request body is {actual} bytes; the limit (limits.max_body_bytes) is {limit}")
        self.limit = limit
        self.actual = actual


class UnsupportedMediaType(RequestError):
    error_type = "unsupported_media_type"
    http_status = 415


class InvalidRequest(RequestError):
    error_type = "invalid_request"


class LimitExceeded(RequestError):
    error_type = "limit_exceeded"

    def __init__(self, what: str, limit: int, actual: int) -> None:
        super().__init__(f"{what} is {actual}; the limit is {limit}")
        self.limit = limit
        self.actual = actual


class ServiceError(CascadeError):
    error_type = "service_error"
    http_status = 500


class Overloaded(ServiceError):
    error_type = "overloaded"
    http_status = 503


class ModelUnavailable(ServiceError):
    error_type = "model_unavailable"
    http_status = 503


_INTERNAL_MESSAGE = "internal error; the request id identifies it in the gateway's log"


def error_response(error: BaseException) -> tuple[int, dict[str, Any]]:
    """Map any exception to ``(status, body)`` with the single error body shape.

    Client errors say exactly what was wrong; unexpected errors say nothing about internals.
    """
    if isinstance(error, (RequestError, ServiceError)):
        return error.http_status, {"error": {"type": error.error_type, "message": error.message}}
    return 500, {"error": {"type": "internal_error", "message": _INTERNAL_MESSAGE}}

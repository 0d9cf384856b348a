"""The one exception tree of cascade-gateway, and the one place that maps it to HTTP.

    CascadeError
    ├── ConfigError                 bad YAML / settings, raised at start-up
    ├── ArtifactError               a model folder that is missing, tampered with, or mismatched
    ├── DataError                   a dataset line that cannot be used (file and line named)
    ├── RequestError                the client's fault, a 4xx; never reaches a model
    │   ├── InvalidJSON             400: the body is not JSON
    │   ├── Unauthorized            401: no API key, or not one the gateway knows
    │   ├── Forbidden               403: the key may not do this (``route: teacher``)
    │   ├── PayloadTooLarge         413: the body is over ``limits.max_body_bytes``
    │   ├── UnsupportedMediaType    415: a body declared as something other than JSON
    │   ├── InvalidRequest          422: the body does not match the schema
    │   ├── LimitExceeded           422: too many inputs, or a text too long
    │   ├── RateLimited             429: the key is over its request rate or teacher budget
    │   └── ClientGone              none: the client left before its body arrived; nothing is answered
    └── ServiceError                ours, a 5xx; the message never leaks internals
        ├── ModelError              500: a model's code raised on this request
        ├── Overloaded              503: a role's queue is full (back-pressure)
        ├── ModelUnavailable        503: a role is down, not answering, or its circuit breaker is open
        └── ModelTimeout            504: a role, or the whole request, ran past its timeout

Every error that carries a limit carries the limit and the actual value, so the message can say both.
An error that is worth retrying later carries ``retry_after_s``, sent as ``Retry-After``.
"""

from __future__ import annotations

import math
from typing import Any

from serving.vocabulary import Failure


class CascadeError(Exception):
    """Base of every error this project raises on purpose."""

    error_type = "cascade_error"
    http_status = 500
    default_retry_after_s: float | None = None
    """``Retry-After`` when the raiser does not say: set on the errors that are worth retrying later."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s if retry_after_s is not None else self.default_retry_after_s


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


class Unauthorized(RequestError):
    error_type = "unauthorized"
    http_status = 401


class Forbidden(RequestError):
    error_type = "forbidden"
    http_status = 403


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


class RateLimited(RequestError):
    error_type = "rate_limited"
    http_status = 429


class ClientGone(RequestError):
    """The connection closed while the request body was being read: there is nobody to answer."""

    error_type = "client_gone"
    http_status = 400


class ServiceError(CascadeError):
    error_type = "service_error"
    http_status = 500
    failure: Failure = "error"
    """Why a model did not answer, in the vocabulary's words (a degraded answer's reason, a metric label)."""


class ModelError(ServiceError):
    """The model's code raised on this request (the replica is alive): a 500, without a retry hint."""

    error_type = "model_error"


class Overloaded(ServiceError):
    failure = "overloaded"
    error_type = "overloaded"
    http_status = 503
    default_retry_after_s = 1.0


class ModelUnavailable(ServiceError):
    failure = "unavailable"
    error_type = "model_unavailable"
    http_status = 503
    default_retry_after_s = 1.0


class ModelTimeout(ServiceError):
    failure = "timeout"
    error_type = "model_timeout"
    http_status = 504
    default_retry_after_s = 1.0


_INTERNAL_MESSAGE = "internal error; the request id identifies it in the gateway's log"


def error_response(error: BaseException) -> tuple[int, dict[str, Any]]:
    """Map any exception to ``(status, body)`` with the single error body shape.

    Client errors say exactly what was wrong; unexpected errors say nothing about internals.
    """
    if isinstance(error, (RequestError, ServiceError)):
        return error.http_status, {"error": {"type": error.error_type, "message": error.message}}
    return 500, {"error": {"type": "internal_error", "message": _INTERNAL_MESSAGE}}


def error_headers(error: BaseException) -> dict[str, str]:
    """Headers that go with the error body: ``Retry-After`` (whole seconds, at least 1), ``WWW-Authenticate``."""
    headers: dict[str, str] = {}
    retry_after = getattr(error, "retry_after_s", None) if isinstance(error, CascadeError) else None
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    if isinstance(error, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="cascade-gateway"'
    return headers

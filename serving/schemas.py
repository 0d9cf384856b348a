"""The HTTP contract (clients, dashboards and load tests rely on these names) and its validation.

Validation is pure (bytes in, a request or a ``RequestError`` out) so that every rejection is
unit-tested without a server, and nothing invalid is ever queued for a model.
"""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serving.config import LimitSettings
from serving.errors import InvalidJSON, InvalidRequest, LimitExceeded, PayloadTooLarge
from serving.vocabulary import Role, Route


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: str | list[str] = Field(
        description="One text, or a list of texts classified in order.", examples=["I lost my card"]
    )
    route: Route = Field(
        "auto",
        description="auto: the cascade decides; student / teacher: force that model.",
    )

    @property
    def texts(self) -> list[str]:
        return [self.inputs] if isinstance(self.inputs, str) else list(self.inputs)


class ClassifyResult(BaseModel):
    label: str
    confidence: float
    served_by: Role
    escalated: bool
    scores: dict[str, float]


class ClassifyResponse(BaseModel):
    results: list[ClassifyResult]
    model_versions: dict[Role, str]


class ErrorDetail(BaseModel):
    type: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


def check_body_size(declared_length: str | None, limits: LimitSettings) -> None:
    """Reject by ``Content-Length`` before reading the body, when the client declares one."""
    if declared_length is None:
        return
    try:
        length = int(declared_length)
    except ValueError:
        raise InvalidRequest(f"Content-Length {declared_length!r} is not an integer") from None
    if length > limits.max_body_bytes:
        raise PayloadTooLarge(limits.max_body_bytes, length)


def _describe(error: ValidationError) -> str:
    item = error.errors()[0]
    where = ".".join(str(part) for part in item["loc"]) or "body"
    if item["type"] == "missing":
        return f"{where} is required"
    if item["type"] == "extra_forbidden":
        return f"unknown field {where!r}; allowed fields are 'inputs' and 'route'"
    if item["loc"][:1] == ("route",):
        return f"route must be one of 'auto', 'student', 'teacher', got {item.get('input')!r}"
    if item["loc"][:1] == ("inputs",):
        return "inputs must be a string or a list of strings"
    return f"{where}: {item['msg']}"


def parse_classify_request(body: bytes, limits: LimitSettings) -> ClassifyRequest:
    """Validate a ``POST /v1/classify`` body against the schema and the configured limits."""
    if len(body) > limits.max_body_bytes:
        raise PayloadTooLarge(limits.max_body_bytes, len(body))
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidJSON(f"request body is not valid JSON: {error}") from None
    if not isinstance(payload, dict):
        raise InvalidRequest(f"request body must be a JSON object, got {type(payload).__name__}")
    try:
        request = ClassifyRequest.model_validate(payload, strict=True)
    except ValidationError as error:
        raise InvalidRequest(_describe(error)) from None
    texts = request.texts
    if not texts:
        raise InvalidRequest("inputs is an empty list; send at least one text")
    if len(texts) > limits.max_inputs:
        raise LimitExceeded("number of inputs (limits.max_inputs)", limits.max_inputs, len(texts))
    for index, text in enumerate(texts):
        if not text.strip():
            raise InvalidRequest(f"inputs[{index}] is empty")
        if len(text) > limits.max_text_chars:
            raise LimitExceeded(
                f"length of inputs[{index}] in characters (limits.max_text_chars)",
                limits.max_text_chars,
                len(text),
            )
    return request

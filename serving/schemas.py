"""The HTTP contract (clients, dashboards and load tests rely on these names) and its validation.

Validation is pure (bytes in, a request or a ``RequestError`` out) so that every rejection is
unit-tested without a server, and nothing invalid is ever queued for a model.
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serving.config import LimitSettings
from serving.errors import InvalidJSON, InvalidRequest, LimitExceeded, PayloadTooLarge, UnsupportedMediaType
from serving.vocabulary import DegradedReason, Role, Route


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
    degraded: bool = Field(
        False, description="The model the cascade wanted could not answer; the other one did (see degraded_reason)."
    )
    degraded_reason: DegradedReason | None = Field(
        None, description="Who could not answer and why, e.g. teacher_timeout; null when not degraded."
    )


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


def check_content_type(content_type: str | None) -> None:
    """JSON bodies only: ``application/json`` or ``application/<x>+json``, with parameters; undeclared is JSON."""
    if content_type is None:
        return
    media = content_type.split(";", 1)[0].strip().lower()
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        raise UnsupportedMediaType(f"Content-Type {media or content_type!r} is not supported; send application/json")


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


MAX_INTEGER_DIGITS = 20
"""The body has no integer field: a longer literal is refused before Python spends time converting it."""
_REFUSED_CHARACTER = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
"""Control characters (Unicode category Cc: U+0000-001F, U+007F-009F) but tab, newline and carriage
return, and lone surrogates. One regular-expression scan: a Python loop over the characters was the
largest single cost of the gateway's own per-request code (benchmarks/handler_cost.py)."""


def _bounded_int(literal: str) -> int:
    if len(literal.lstrip("-")) > MAX_INTEGER_DIGITS:
        raise InvalidJSON(f"request body has an integer of {len(literal)} digits; at most {MAX_INTEGER_DIGITS}")
    return int(literal)


_DECODER = json.JSONDecoder(parse_int=_bounded_int)
"""One decoder for every body: ``json.loads`` with ``parse_int`` builds a new one per call."""


def _decode(body: bytes) -> Any:
    """``json.loads(body, parse_int=_bounded_int)``: the same encoding detection, the shared decoder."""
    return _DECODER.decode(body.decode(json.detect_encoding(body), "surrogatepass"))


def _invisible(character: str) -> bool:
    """Whitespace and format characters (zero-width space, BOM, joiners): nothing a model can read."""
    return character.isspace() or unicodedata.category(character) == "Cf"


def check_text(index: int, text: str) -> str:
    """One input text, refused with a message naming the item or returned NFC-normalised.

    Refused: lone surrogates (not encodable; a tokenizer would fail the whole batch), control characters
    other than tab and newlines, and texts with nothing visible left (empty, spaces, zero-width, BOM).
    """
    refused = _REFUSED_CHARACTER.search(text)
    if refused is not None:
        code, position = ord(refused.group()), refused.start()
        kind = "a lone surrogate" if 0xD800 <= code <= 0xDFFF else "the control character"
        raise InvalidRequest(f"inputs[{index}] has {kind} U+{code:04X} at position {position}")
    if all(_invisible(character) for character in text):  # stops at the first visible character
        raise InvalidRequest(f"inputs[{index}] is empty (nothing but whitespace or invisible characters)")
    return text if unicodedata.is_normalized("NFC", text) else unicodedata.normalize("NFC", text)


def parse_classify_request(body: bytes, limits: LimitSettings) -> ClassifyRequest:
    """Validate a ``POST /v1/classify`` body against the schema and the configured limits."""
    if len(body) > limits.max_body_bytes:
        raise PayloadTooLarge(limits.max_body_bytes, len(body))
    try:
        payload = _decode(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidJSON(f"request body is not valid JSON: {error}") from None
    except RecursionError:
        raise InvalidJSON("request body is nested too deeply; the schema needs two levels") from None
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
        if len(text) > limits.max_text_chars:
            raise LimitExceeded(
                f"length of inputs[{index}] in characters (limits.max_text_chars)",
                limits.max_text_chars,
                len(text),
            )
    checked = [check_text(index, text) for index, text in enumerate(texts)]
    inputs = checked[0] if isinstance(request.inputs, str) else checked
    return request.model_copy(update={"inputs": inputs})

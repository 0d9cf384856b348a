"""Request validation and the error mapping: every bad input gets its 4xx and one body shape."""

from __future__ import annotations

import asyncio
import json
import sys
import unicodedata
from typing import Any

import pytest

from serving.config import LimitSettings
from serving.errors import (
    ArtifactError,
    InvalidJSON,
    InvalidRequest,
    LimitExceeded,
    ModelUnavailable,
    Overloaded,
    PayloadTooLarge,
    RequestError,
    UnsupportedMediaType,
    error_response,
)
from serving.schemas import check_body_size, check_content_type, check_text, parse_classify_request

LIMITS = LimitSettings(max_body_bytes=500, max_inputs=3, max_text_chars=40)


def _body(payload: object) -> bytes:
    return json.dumps(payload).encode()


def test_single_text_and_list_are_accepted() -> None:
    assert parse_classify_request(_body({"inputs": "hi"}), LIMITS).texts == ["hi"]
    request = parse_classify_request(_body({"inputs": ["a", "b"], "route": "teacher"}), LIMITS)
    assert request.texts == ["a", "b"] and request.route == "teacher"
    assert parse_classify_request(_body({"inputs": "x"}), LIMITS).route == "auto"


@pytest.mark.parametrize(
    ("body", "error", "status", "fragment"),
    [
        (b"{not json", InvalidJSON, 400, "not valid JSON"),
        (b"\xff\xfe", InvalidJSON, 400, "not valid JSON"),
        (_body(["a"]), InvalidRequest, 422, "must be a JSON object"),
        (_body({}), InvalidRequest, 422, "inputs is required"),
        (_body({"inputs": []}), InvalidRequest, 422, "empty list"),
        (_body({"inputs": ""}), InvalidRequest, 422, "inputs[0] is empty"),
        (_body({"inputs": ["ok", "   "]}), InvalidRequest, 422, "inputs[1] is empty"),
        (_body({"inputs": ["ok", 3]}), InvalidRequest, 422, "string or a list of strings"),
        (_body({"inputs": 7}), InvalidRequest, 422, "string or a list of strings"),
        (
            _body({"inputs": "x", "route": "gpu"}),
            InvalidRequest,
            422,
            "'auto', 'student', 'teacher', got 'gpu'",
        ),
        (_body({"inputs": "x", "model": "y"}), InvalidRequest, 422, "unknown field 'model'"),
        (_body({"inputs": ["a", "b", "c", "d"]}), LimitExceeded, 422, "is 4; the limit is 3"),
        (_body({"inputs": "y" * 41}), LimitExceeded, 422, "is 41; the limit is 40"),
        (b" " * 501, PayloadTooLarge, 413, "501 bytes; the limit (limits.max_body_bytes) is 500"),
        # texts that would fail a tokenizer (and with it every text batched beside them), or carry nothing
        (b'{"inputs": ["ok", "lost \\ud800 card"]}', InvalidRequest, 422, "inputs[1] has a lone surrogate U+D800"),
        (_body({"inputs": "a\x00b"}), InvalidRequest, 422, "inputs[0] has the control character U+0000"),
        (_body({"inputs": "a\x85b"}), InvalidRequest, 422, "control character U+0085"),
        (_body({"inputs": ["ok", "\u200b\ufeff \u2060"]}), InvalidRequest, 422, "inputs[1] is empty (nothing but"),
        # bodies that would cost the parser (a huge integer, deep nesting) are refused as bad JSON
        (b'{"inputs": "x", "n": ' + b"9" * 400 + b"}", InvalidJSON, 400, "integer of 400 digits"),
    ],
)
def test_bad_requests_map_to_their_status(body: bytes, error: type[RequestError], status: int, fragment: str) -> None:
    with pytest.raises(error) as caught:
        parse_classify_request(body, LIMITS)
    code, payload = error_response(caught.value)
    assert code == status
    assert payload["error"]["type"] == error.error_type
    assert fragment in payload["error"]["message"]


def test_only_json_bodies_are_accepted() -> None:
    for accepted in (None, "application/json", "application/json; charset=utf-8", "application/merge+json"):
        check_content_type(accepted)
    for refused in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""):
        with pytest.raises(UnsupportedMediaType, match="send application/json"):
            check_content_type(refused)
    assert error_response(UnsupportedMediaType("x"))[0] == 415


def test_deep_nesting_is_bad_json_not_a_crash() -> None:
    limits = LimitSettings(max_body_bytes=1_000_000)
    with pytest.raises(InvalidJSON, match="nested too deeply"):
        parse_classify_request(b"[" * 100_000 + b"]" * 100_000, limits)


def test_texts_keep_tabs_and_newlines_and_are_nfc_normalised() -> None:
    request = parse_classify_request(_body({"inputs": ["line one\nline\ttwo", "cafe\u0301"]}), LIMITS)
    assert request.texts == ["line one\nline\ttwo", "caf\u00e9"]
    assert parse_classify_request(_body({"inputs": "cafe\u0301"}), LIMITS).inputs == "caf\u00e9"


def test_declared_content_length_is_checked_before_reading() -> None:
    check_body_size("500", LIMITS)
    check_body_size(None, LIMITS)
    with pytest.raises(PayloadTooLarge):
        check_body_size("10000000", LIMITS)
    with pytest.raises(InvalidRequest, match="not an integer"):
        check_body_size("lots", LIMITS)


def test_service_errors_are_5xx_and_internal_errors_leak_nothing() -> None:
    assert error_response(Overloaded("queue full"))[0] == 503
    assert error_response(ModelUnavailable("teacher down"))[0] == 503
    status, body = error_response(RuntimeError("secret path /etc/passwd"))
    assert status == 500 and "secret" not in body["error"]["message"]
    # Start-up errors are not client answers either: they never leak their text over HTTP.
    status, body = error_response(ArtifactError("checksum of /models/x mismatched"))
    assert status == 500 and "/models" not in body["error"]["message"]


class _Answering:
    """Stands in for the ingress: records what classify was given and answers a fixed triple."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []

    async def classify_answer(self, headers: dict[str, str], receive: Any) -> tuple[int, bytes, dict[str, str]]:
        from serving.ingress import read_body

        self.headers.append(headers)
        body = await read_body(receive, 1000)
        return 429, body, {"Retry-After": "2"}


def _drive(app: Any, scope: dict[str, Any], messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run one ASGI call; returns what the app sent."""
    incoming = list(messages)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def test_classify_is_answered_before_fastapi_and_everything_else_reaches_it() -> None:
    from serving.ingress import ClassifyFirst

    fastapi_calls: list[str] = []

    async def fastapi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        fastapi_calls.append(f"{scope.get('method')} {scope.get('path')}")

    ingress = _Answering()
    app = ClassifyFirst(ingress, fastapi)  # type: ignore[arg-type]
    headers = [(b"content-type", b"application/json"), (b"x-request-id", b"a"), (b"x-request-id", b"b"), (b"x-o", b"1")]
    scope = {"type": "http", "method": "POST", "path": "/v1/classify", "headers": headers}
    sent = _drive(
        app,
        scope,
        [{"type": "http.request", "body": b'{"in', "more_body": True}, {"type": "http.request", "body": b'puts"}'}],
    )
    assert ingress.headers == [{"content-type": "application/json", "x-request-id": "a"}]  # first of repeated
    assert sent[0]["status"] == 429
    assert (b"retry-after", b"2") in sent[0]["headers"] and (b"content-length", b"10") in sent[0]["headers"]
    assert sent[1] == {"type": "http.response.body", "body": b'{"inputs"}'}
    assert fastapi_calls == []

    for method, path in (("GET", "/v1/classify"), ("POST", "/v1/models"), ("POST", "/v1/classify/")):
        _drive(app, {**scope, "method": method, "path": path}, [])
    _drive(app, {"type": "lifespan"}, [])
    assert fastapi_calls == ["GET /v1/classify", "POST /v1/models", "POST /v1/classify/", "None None"]


def test_a_client_gone_before_its_body_is_not_answered() -> None:
    from serving.ingress import ClassifyFirst

    async def fastapi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise AssertionError("not for FastAPI")

    scope = {"type": "http", "method": "POST", "path": "/v1/classify", "headers": []}
    app = ClassifyFirst(_Answering(), fastapi)  # type: ignore[arg-type]
    assert (
        _drive(app, scope, [{"type": "http.request", "body": b"{", "more_body": True}, {"type": "http.disconnect"}])
        == []
    )


def test_exactly_control_characters_and_lone_surrogates_are_refused() -> None:
    """Every code point, against the definition: Unicode category Cc (but tab, newline, CR) or a surrogate."""
    allowed_controls = {"\t", "\n", "\r"}
    for code in range(sys.maxunicode + 1):
        character = chr(code)
        refused = (unicodedata.category(character) == "Cc" and character not in allowed_controls) or (
            0xD800 <= code <= 0xDFFF
        )
        try:
            check_text(3, f"ok{character}")
        except InvalidRequest as error:
            assert refused, f"U+{code:04X} was refused: {error}"
            assert f"U+{code:04X} at position 2" in str(error) and "inputs[3]" in str(error)
        else:
            assert not refused, f"U+{code:04X} was accepted"

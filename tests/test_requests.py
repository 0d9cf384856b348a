"""Request validation and the error mapping: every bad input gets its 4xx and one body shape."""

from __future__ import annotations

import json

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
    error_response,
)
from serving.schemas import check_body_size, parse_classify_request

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
    ],
)
def test_bad_requests_map_to_their_status(body: bytes, error: type[RequestError], status: int, fragment: str) -> None:
    with pytest.raises(error) as caught:
        parse_classify_request(body, LIMITS)
    code, payload = error_response(caught.value)
    assert code == status
    assert payload["error"]["type"] == error.error_type
    assert fragment in payload["error"]["message"]


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

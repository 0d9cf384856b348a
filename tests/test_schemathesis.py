"""Generated requests against a running gateway's own OpenAPI schema (schemathesis): no 5xx, every
response as the schema declares it (status code, content type, body).

The gateway runs in-process on the session's Ray with the tiny pair. Cases come from schemathesis's
Hypothesis strategies per operation (its pytest loader does not run on this pytest), both the ones
the schema allows and ones it does not; at least ``MIN_REQUESTS`` are sent, counted as they go.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from serving.config import parse_config
from tests.builders import TinyPair
from tests.gateway_helpers import gateway_config

pytestmark = pytest.mark.slow

APP = "cascade-schemathesis"
MIN_REQUESTS = 500
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
PLAN = [  # (path, method, generation mode, examples)
    ("/v1/classify", "POST", GenerationMode.POSITIVE, 300),
    ("/v1/classify", "POST", GenerationMode.NEGATIVE, 200),
    ("/v1/models", "GET", GenerationMode.POSITIVE, 10),
    ("/healthz", "GET", GenerationMode.POSITIVE, 10),
    ("/readyz", "GET", GenerationMode.POSITIVE, 10),
]


@pytest.fixture(scope="module")
def gateway_schema(serve_port: int, tiny_pair: TinyPair) -> Iterator[Any]:
    from ray import serve

    from serving.application import build_app

    config = gateway_config(tiny_pair, threshold=0.5, port=serve_port)
    serve.run(build_app(parse_config(config)), name=APP, route_prefix="/")
    try:
        yield schemathesis.openapi.from_url(f"http://127.0.0.1:{serve_port}/openapi.json")
    finally:
        serve.delete(APP)


def _run(operation: Any, mode: GenerationMode, examples: int, count: dict[str, int], label: str) -> None:
    """Send ``examples`` generated cases of one operation and validate each response."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def call(case: Any) -> None:
        count[label] = count.get(label, 0) + 1
        case.call_and_validate(checks=CHECKS, timeout=60)

    call()


def test_generated_requests_get_no_5xx_and_answers_match_the_schema(gateway_schema: Any) -> None:
    sent: dict[str, int] = {}
    for path, method, mode, examples in PLAN:
        _run(gateway_schema[path][method], mode, examples, sent, f"{method} {path} {mode.value}")
    assert sum(sent.values()) >= MIN_REQUESTS, sent

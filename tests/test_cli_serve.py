"""End to end: `cascade serve --config` as a subprocess on a free port, spoken to over HTTP.

Two servers, one per threshold: τ = 0 never escalates, τ = 1.5 always does.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from serving.process import GatewayProcess
from tests.builders import TEXTS, TinyPair
from tests.conftest import free_port
from tests.gateway_helpers import BAD_REQUESTS, gateway_config, write_config

pytestmark = pytest.mark.slow  # `cascade serve` processes

# About 25 s on an idle 2-core machine; generous, because a busy CI machine can be several times slower.
STARTUP_DEADLINE_S = 420.0


def ray_core_pids() -> set[int]:
    """PIDs of Ray's per-node daemons (raylet, GCS): one set per running Ray instance."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if b"/raylet" in cmdline or b"gcs_server" in cmdline:
                pids.add(int(entry.name))
    return pids


@dataclass
class Server:
    url: str
    threshold: float
    gateway: GatewayProcess


@pytest.fixture(scope="module", params=[0.0, 1.5], ids=["tau=0", "tau=1.5"])
def server(
    request: pytest.FixtureRequest, tiny_pair: TinyPair, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    threshold: float = request.param
    folder = tmp_path_factory.mktemp("serve")
    port = free_port()
    config = write_config(folder / "gateway.yaml", gateway_config(tiny_pair, threshold=threshold, port=port))
    before = ray_core_pids()
    # Ready means /readyz answered 200; on failure it stops the server and raises with its log's tail.
    gateway = GatewayProcess(
        config, folder / "serve.log", port=port, startup_timeout_s=STARTUP_DEADLINE_S, stop_timeout_s=90
    )
    try:
        # The process prints its "listening on" line once its own readiness check passes, which can
        # be a moment after ours did.
        end = time.monotonic() + 60
        while "listening on" not in gateway.output() and time.monotonic() < end:
            time.sleep(0.2)
        assert "listening on" in gateway.output(), gateway.output()[-3000:]
        yield Server(gateway.url, threshold, gateway)
    finally:
        code = gateway.stop()  # Ctrl-C, as a user would; SIGKILL only after 90 s
        leftover = ray_core_pids() - before
        assert code == 0, gateway.output()[-3000:]
        assert not leftover, f"Ray processes left behind by cascade serve: {leftover}"


def test_auto_route_follows_the_threshold(server: Server) -> None:
    response = httpx.post(f"{server.url}/v1/classify", json={"inputs": TEXTS}, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["results"]) == len(TEXTS)
    expected = "teacher" if server.threshold > 1 else "student"
    assert {r["served_by"] for r in body["results"]} == {expected}
    assert all(r["escalated"] is (server.threshold > 1) for r in body["results"])
    assert body["model_versions"] == {"student": "tiny-student:1", "teacher": "tiny-teacher:1"}
    first = body["results"][0]
    assert first["label"] == max(first["scores"], key=first["scores"].get)
    assert first["confidence"] == pytest.approx(max(first["scores"].values()), abs=1e-6)


def test_single_text_and_forced_routes(server: Server) -> None:
    for route in ("teacher", "student"):
        response = httpx.post(f"{server.url}/v1/classify", json={"inputs": "hello", "route": route}, timeout=30)
        assert response.status_code == 200, response.text
        (result,) = response.json()["results"]
        assert result["served_by"] == route and result["escalated"] is False


def test_request_id_is_taken_or_made(server: Server) -> None:
    given = httpx.post(
        f"{server.url}/v1/classify", json={"inputs": "hi"}, headers={"X-Request-Id": "abc-123"}, timeout=30
    )
    assert given.headers["x-request-id"] == "abc-123"
    made = httpx.post(f"{server.url}/v1/classify", json={"inputs": "hi"}, timeout=30)
    assert len(made.headers["x-request-id"]) >= 16


@pytest.mark.parametrize(("case", "body", "status", "error_type"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_input_gets_its_4xx_and_the_next_request_succeeds(
    server: Server, case: str, body: bytes, status: int, error_type: str
) -> None:
    response = httpx.post(
        f"{server.url}/v1/classify", content=body, headers={"content-type": "application/json"}, timeout=30
    )
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"}
    assert response.json()["error"]["type"] == error_type
    assert response.json()["error"]["message"]
    follow_up = httpx.post(f"{server.url}/v1/classify", json={"inputs": "still fine?"}, timeout=30)
    assert follow_up.status_code == 200


def test_a_body_that_is_not_json_gets_415(server: Server) -> None:
    form = httpx.post(f"{server.url}/v1/classify", data={"inputs": "hi"}, timeout=30)  # what curl -d sends
    assert form.status_code == 415 and form.json()["error"]["type"] == "unsupported_media_type"
    assert "application/json" in form.json()["error"]["message"]


def test_service_endpoints(server: Server) -> None:
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{server.url}/readyz", timeout=15)
    assert ready.status_code == 200 and ready.json()["roles"] == {"student": "ready", "teacher": "ready"}
    models = httpx.get(f"{server.url}/v1/models").json()
    assert models["roles"]["student"]["backend"] == "onnx" and models["roles"]["teacher"]["backend"] == "torch"
    assert models["cascade"]["threshold"] == server.threshold
    docs = httpx.get(f"{server.url}/docs")
    assert docs.status_code == 200 and "cdn" not in docs.text.lower()  # /docs works offline
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        served = httpx.get(f"{server.url}/docs/assets/{asset}")
        assert served.status_code == 200 and len(served.content) > 10_000
    schema = httpx.get(f"{server.url}/openapi.json").json()
    assert "/v1/classify" in schema["paths"]
    missing = httpx.get(f"{server.url}/v2/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found"

"""End to end: `cascade serve --config` as a subprocess on a free port, spoken to over HTTP.

Two servers, one per threshold: τ = 0 never escalates, τ = 1.5 always does.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from serving.ports import free_local_port
from serving.process import GatewayProcess
from tests.builders import TEXTS, TinyPair
from tests.gateway_helpers import BAD_REQUESTS, gateway_config, write_config

pytestmark = pytest.mark.slow  # `cascade serve` processes

# About 25 s on an idle 2-core machine; generous, because a busy CI machine can be several times slower.
STARTUP_DEADLINE_S = 420.0
HEADER_TIMEOUT_S = 2.0
STALLED_CONNECTIONS = 300  # more than the ingress's 256 slots: without the front proxy they starve everyone


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
    port = free_local_port()
    settings = gateway_config(tiny_pair, threshold=threshold, port=port)
    settings["http"]["front_proxy"] = {"kind": "haproxy", "header_timeout_s": HEADER_TIMEOUT_S}
    settings["metrics"] = {"port": free_local_port()}
    config = write_config(folder / "gateway.yaml", settings)
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


def _raw(url: str, data: bytes, wait_s: float = 30.0) -> bytes:
    """Send raw bytes on one connection and read until the server closes it."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait_s) as connection:
        connection.sendall(data)
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    return received


def _error_of(response: bytes) -> tuple[int, str, dict[str, str]]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), json.loads(body)["error"]["type"], headers


def test_stalled_connections_do_not_starve_well_behaved_clients(server: Server) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    stalled = []
    try:
        for _ in range(STALLED_CONNECTIONS):  # headers sent, the body never finished
            connection = socket.create_connection((host, int(port)), timeout=30)
            connection.sendall(
                b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 100\r\n\r\n{"inp'
            )
            stalled.append(connection)
        for _ in range(5):
            response = httpx.post(f"{server.url}/v1/classify", json={"inputs": "hi"}, timeout=30)
            assert response.status_code == 200, response.text
        assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
        received = b""
        while chunk := stalled[0].recv(65536):  # cut at the header timeout, in the one error shape
            received += chunk
        assert _error_of(received)[:2] == (408, "request_timeout")
    finally:
        for connection in stalled:
            connection.close()


def test_an_unsafe_request_id_is_replaced_before_it_reaches_ray(server: Server) -> None:
    body = b'{"inputs": "hi"}'
    for unsafe in (b"\xff\xfe-not-utf-8", b"has space", b"x" * 200):
        response = _raw(
            server.url,
            b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
            b"X-Request-Id: " + unsafe + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body,
        )
        head = response.partition(b"\r\n\r\n")[0].decode("latin-1").lower()
        assert head.startswith("http/1.1 200"), head
        request_id = next(line for line in head.split("\r\n") if line.startswith("x-request-id:")).split(":", 1)[1]
        assert re.fullmatch(r"[0-9a-z._:-]{1,128}", request_id.strip()), request_id


def test_a_body_that_is_not_json_gets_415(server: Server) -> None:
    form = httpx.post(f"{server.url}/v1/classify", data={"inputs": "hi"}, timeout=30)  # what curl -d sends
    assert form.status_code == 415 and form.json()["error"]["type"] == "unsupported_media_type"
    assert "application/json" in form.json()["error"]["message"]


def test_service_endpoints(server: Server) -> None:
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    slash = httpx.post(f"{server.url}/v1/classify/", json={"inputs": "hi"})  # no empty redirect
    assert slash.status_code == 404 and slash.json()["error"]["type"] == "not_found"
    assert httpx.head(f"{server.url}/v1/classify").status_code == 405
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


def test_ctrl_c_drains_accepted_requests_and_refuses_new_ones_in_the_one_shape(
    tiny_pair: TinyPair, tmp_path: Path
) -> None:
    port = free_local_port()
    settings = gateway_config(tiny_pair, threshold=1.5, port=port)  # every text escalates: longer requests
    settings["http"]["front_proxy"] = {"kind": "haproxy"}
    settings["metrics"] = {"port": free_local_port()}  # the module's gateway may still hold the default one
    config = write_config(tmp_path / "gateway.yaml", settings)
    gateway = GatewayProcess(config, tmp_path / "serve.log", port=port, startup_timeout_s=STARTUP_DEADLINE_S)
    outcomes: list[str] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=60) as http:
            while not stop.is_set():
                try:
                    response = http.post(f"{gateway.url}/v1/classify", json={"inputs": TEXTS})
                except httpx.ConnectError:
                    outcomes.append("refused")  # the listener is gone: nothing was accepted
                    time.sleep(0.05)
                    continue
                except httpx.HTTPError as error:
                    outcomes.append(f"cut: {error!r}")  # accepted, then dropped: what a drain must prevent
                    continue
                kind = response.json().get("error", {}).get("type", "ok") if response.status_code != 200 else "ok"
                outcomes.append(f"{response.status_code} {kind}")
                if "retry-after" in response.headers:
                    # As a client should. Clients that reconnected at once sometimes had a connection
                    # opened just as HAProxy stopped closed unanswered (README, Stopping).
                    stop.wait(float(response.headers["retry-after"]))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(8)]
    try:
        for thread in threads:
            thread.start()
        end = time.monotonic() + 60
        while outcomes.count("200 ok") < 20 and time.monotonic() < end:
            time.sleep(0.05)
        code = gateway.stop()  # Ctrl-C under load
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        gateway.stop()
    assert code == 0, gateway.output()[-3000:]
    assert "drained: every accepted request answered" in gateway.output(), gateway.output()[-3000:]
    assert set(outcomes) <= {"200 ok", "503 draining", "refused"}, sorted(set(outcomes))
    assert "503 draining" in outcomes  # requests that came during the drain were told so, not queued


def test_poison_requests_among_concurrent_valid_ones_fail_only_themselves(server: Server) -> None:
    poison = [body for _, body, _, _ in BAD_REQUESTS]
    valid: list[int] = []
    rejected: list[int] = []

    def send_valid(i: int) -> None:
        with httpx.Client(timeout=60) as client:
            for j in range(10):
                response = client.post(f"{server.url}/v1/classify", json={"inputs": [TEXTS[(i + j) % len(TEXTS)]]})
                valid.append(response.status_code)

    def send_poison(i: int) -> None:
        with httpx.Client(timeout=60) as client:
            for j in range(10):
                body = poison[(i + j) % len(poison)]
                headers = {"content-type": "application/json"}
                rejected.append(client.post(f"{server.url}/v1/classify", content=body, headers=headers).status_code)

    threads = [threading.Thread(target=send_valid, args=(i,)) for i in range(6)]
    threads += [threading.Thread(target=send_poison, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert valid == [200] * 60
    assert len(rejected) == 40 and all(400 <= status < 500 for status in rejected), rejected

"""A promotion and a rollback reach a running gateway in place, under continuous traffic, with no failed request."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from serving.artifact import MANIFEST_NAME
from serving.config import parse_config
from serving.registry import Registry
from tests.builders import TEXTS, TinyPair, build_tiny_model
from tests.gateway_helpers import gateway_config

pytestmark = pytest.mark.slow  # Ray Serve under load

APP = "cascade-swap"


@pytest.fixture(scope="module")
def registry(tiny_pair: TinyPair, tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """tiny-student 1 (the pair's) and 2 (other weights), and the teacher; student 1 promoted."""
    root = tmp_path_factory.mktemp("swap")
    second = build_tiny_model(root / "student-2", layers=1, seed=7, role="student", onnx=True)
    manifest = json.loads((second / MANIFEST_NAME).read_text())
    (second / MANIFEST_NAME).write_text(json.dumps({**manifest, "version": "2"}))  # not among the checksums
    registry = Registry(root / "registry")
    registry.add(tiny_pair.student)
    registry.add(second)
    registry.promote("student", "tiny-student", "1")
    return registry


class Traffic:
    """Requests one after another from a thread until stopped; keeps every status and version."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.seen: list[tuple[int, str | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=60) as client:
            i = 0
            while not self._stop.is_set():
                response = client.post(f"{self.url}/v1/classify", json={"inputs": TEXTS[i % len(TEXTS)]})
                version = response.json()["model_versions"]["student"] if response.status_code == 200 else None
                self.seen.append((response.status_code, version))
                i += 1

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def wait_for(self, version: str, deadline_s: float = 120, settled: int = 8) -> None:
        """Until the last ``settled`` answers all came from ``version`` (traffic on each side of a swap)."""
        end = time.time() + deadline_s
        while time.time() < end:
            last = self.seen[-settled:]
            if len(last) == settled and all(v == version for _, v in last):
                return
            time.sleep(0.2)
        raise AssertionError(f"{version} never served; last: {self.seen[-settled:]}")


def _pid(role: str) -> int:
    from ray import serve

    info: dict[str, Any] = serve.get_deployment_handle(role, app_name=APP).info.remote().result(timeout_s=60)
    return int(info["pid"])


@pytest.fixture(params=[False, True], ids=["student-deployment", "student-colocated"])
def swap_gateway(
    request: pytest.FixtureRequest, serve_port: int, tiny_pair: TinyPair, registry: Registry
) -> Iterator[dict[str, Any]]:
    from ray import serve

    from serving.application import build_app

    registry.promote("student", "tiny-student", "1")
    config = gateway_config(tiny_pair, threshold=0.0, port=serve_port)
    config["student"] = {**config["student"], "model": f"registry:{registry.root}/student", "colocate": request.param}
    config["reload"] = {"poll_s": 0.5}
    serve.run(build_app(parse_config(config)), name=APP, route_prefix="/")
    try:
        yield config
    finally:
        serve.delete(APP)


def test_promotion_and_rollback_swap_in_place_with_no_failed_request(
    swap_gateway: dict[str, Any], serve_port: int, registry: Registry
) -> None:
    config = parse_config(swap_gateway)
    url = f"http://127.0.0.1:{serve_port}"
    teacher_pid = _pid("teacher")
    with Traffic(url) as traffic:
        traffic.wait_for("tiny-student:1")
        # Nothing outside the application acts: its replicas and ingress follow the pointer themselves.
        registry.promote("student", "tiny-student", "2", reason="test")
        traffic.wait_for("tiny-student:2")
        registry.rollback("student")
        traffic.wait_for("tiny-student:1")
    statuses = [status for status, _ in traffic.seen]
    # in place: the same teacher process throughout (Ray would otherwise roll every replica on serve.run)
    assert _pid("teacher") == teacher_pid
    assert len(statuses) > 20
    assert set(statuses) == {200}, f"failed requests during the swaps: {[s for s in statuses if s != 200]}"
    versions = [v for _, v in traffic.seen]
    # once a version is in, the previous one never answers again: a clean switch, twice
    switches = [i for i in range(1, len(versions)) if versions[i] != versions[i - 1]]
    assert len(switches) == 2, versions
    models = httpx.get(f"{url}/v1/models").json()
    assert models["roles"]["student"]["version"] == "tiny-student:1"
    assert models["roles"]["student"]["placement"] == ("ingress" if config.student.colocate else "deployment")

"""Real faults on real Ray Serve replicas: the teacher stopped (SIGSTOP) and killed (SIGKILL) under traffic.

Every text escalates (``margin`` at 1.5), so every request needs the teacher. While it is stopped or
dead, ``route: auto`` requests are still answered 200, degraded, within the teacher timeout; none gets
a 5xx; the breaker then answers without waiting; and the teacher serves again once it is back.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from serving.config import parse_config
from tests.builders import TEXTS, TinyPair
from tests.gateway_helpers import gateway_config

pytestmark = pytest.mark.slow

APP = "cascade-faults"
TEACHER_TIMEOUT_S = 1.0
OPEN_S = 1.0
RECOVERY_DEADLINE_S = 120.0  # a new replica on a loaded 2-core machine: Ray's restart, model load, warm-up


@pytest.fixture(scope="module")
def faulty(serve_port: int, tiny_pair: TinyPair) -> Iterator[str]:
    from ray import serve

    from serving.application import build_app

    config: dict[str, Any] = gateway_config(tiny_pair, threshold=0.0, port=serve_port)
    config["cascade"] = {"signal": "margin", "threshold": 1.5}  # every text escalates
    config["resilience"] = {
        "teacher_timeout_s": TEACHER_TIMEOUT_S,
        "student_timeout_s": 5.0,
        "request_timeout_s": 10.0,
        "breaker": {"failures": 3, "open_s": OPEN_S},
    }
    serve.run(build_app(parse_config(config)), name=APP, route_prefix="/")
    try:
        yield f"http://127.0.0.1:{serve_port}"
    finally:
        serve.delete(APP)


def _teacher_pid() -> int:
    from ray import serve

    info: dict[str, Any] = serve.get_deployment_handle("teacher", app_name=APP).info.remote().result(timeout_s=60)
    return int(info["pid"])


def _classify(client: httpx.Client, url: str, route: str = "auto") -> tuple[int, list[dict[str, Any]], float]:
    started = time.monotonic()
    response = client.post(f"{url}/v1/classify", json={"inputs": TEXTS[:2], "route": route}, timeout=30)
    elapsed = time.monotonic() - started
    return response.status_code, response.json().get("results", []), elapsed


def _wait_for_teacher(url: str) -> float:
    """Seconds until a request is answered by the teacher again (not degraded)."""
    started = time.monotonic()
    with httpx.Client() as client:
        while time.monotonic() - started < RECOVERY_DEADLINE_S:
            status, results, _ = _classify(client, url)
            if status == 200 and all(r["served_by"] == "teacher" and not r["degraded"] for r in results):
                return time.monotonic() - started
            time.sleep(0.2)
    raise AssertionError(f"the teacher did not serve again within {RECOVERY_DEADLINE_S} s")


def _burst(url: str, requests: int) -> list[tuple[int, list[dict[str, Any]], float]]:
    with httpx.Client() as client, ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda _: _classify(client, url), range(requests)))


def test_a_stopped_teacher_costs_at_most_its_timeout_and_then_nothing(faulty: str) -> None:
    _wait_for_teacher(faulty)
    pid = _teacher_pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        answers = _burst(faulty, 24)
        with httpx.Client() as client:
            student = [_classify(client, faulty, "student") for _ in range(5)]
            health = [client.get(f"{faulty}/healthz", timeout=10) for _ in range(5)]
    finally:
        with contextlib.suppress(ProcessLookupError):  # Ray's health check replaced it: also a recovery
            os.kill(pid, signal.SIGCONT)
    assert {status for status, _, _ in answers} == {200}
    reasons = {r["degraded_reason"] for _, results, _ in answers for r in results}
    assert reasons <= {"teacher_timeout", "teacher_unavailable"} and "teacher_timeout" in reasons
    assert {r["served_by"] for _, results, _ in answers for r in results} == {"student"}
    # each call is cut at the teacher timeout; the slack is for a loaded machine, not for a hang
    assert max(elapsed for _, _, elapsed in answers) < TEACHER_TIMEOUT_S + 5.0
    assert "teacher_unavailable" in reasons, "the breaker never opened"
    assert {status for status, _, _ in student} == {200}
    assert {response.status_code for response in health} == {200}
    _wait_for_teacher(faulty)


def test_a_killed_teacher_gives_no_5xx_and_is_back_by_itself(faulty: str) -> None:
    _wait_for_teacher(faulty)
    pid = _teacher_pid()
    os.kill(pid, signal.SIGKILL)
    answers = _burst(faulty, 24)
    assert {status for status, _, _ in answers} == {200}, [a for a in answers if a[0] != 200][:3]
    assert _wait_for_teacher(faulty) < RECOVERY_DEADLINE_S
    assert _teacher_pid() != pid

"""The gateway's guard around every model call, in one process: timeouts, breaker, retry, degraded answers.

The roles here are in-process handles with Ray's calling convention (``handle.logits.remote(texts)``),
so each fault is exact and instant: a call that never returns, one that raises, a replica that is gone
once. The same faults on real Ray replicas (SIGSTOP, SIGKILL) are in ``test_faults_live.py``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest
from ray.exceptions import ActorDiedError

from serving.application import gateway_user_config
from serving.auth import hash_key
from serving.config import parse_config
from serving.errors import ModelError, ModelTimeout, RateLimited
from serving.gateway import Gateway
from tests.builders import LABELS, TinyPair
from tests.gateway_helpers import gateway_config
from tests.recorded_metrics import recording_metrics

Behaviour = Callable[[list[str]], Awaitable[np.ndarray]]


class _Method:
    def __init__(self, call: Callable[..., Awaitable[Any]]) -> None:
        self.remote = call


class LocalHandle:
    """A role in this process, called the way the gateway calls a Ray Serve handle."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.calls = 0

        async def logits(texts: list[str], deadline: float | None = None) -> tuple[np.ndarray, float]:
            self.calls += 1
            return await self.behaviour(texts), 0.001 * len(texts)

        async def info() -> dict[str, float]:
            return {"seconds_per_text": 0.001}

        self.logits = _Method(logits)
        self.info = _Method(info)


def unsure(texts: list[str]) -> Awaitable[np.ndarray]:
    """Equal logits: max prob 1/k, escalated at any useful threshold."""

    async def answer() -> np.ndarray:
        return np.zeros((len(texts), len(LABELS)), dtype=np.float32)

    return answer()


def sure(texts: list[str]) -> Awaitable[np.ndarray]:
    async def answer() -> np.ndarray:
        logits = np.zeros((len(texts), len(LABELS)), dtype=np.float32)
        logits[:, 0] = 9.0
        return logits

    return answer()


async def hang(texts: list[str]) -> np.ndarray:
    await asyncio.Event().wait()  # never set: a stopped process
    raise AssertionError("unreachable")


async def broken(texts: list[str]) -> np.ndarray:
    raise RuntimeError("CUDA error: an illegal memory access was encountered")


def _gateway(
    pair: TinyPair, student: Behaviour, teacher: Behaviour, **sections: Any
) -> tuple[Gateway, LocalHandle, LocalHandle, dict[str, Any]]:
    config = gateway_config(pair, threshold=0.5, port=8000)
    config["resilience"] = {
        "student_timeout_s": 0.5,
        "teacher_timeout_s": 0.3,
        "request_timeout_s": 5.0,
        "breaker": {"failures": 2, "open_s": 60.0},
        **sections.pop("resilience", {}),
    }
    config.update(sections)
    metrics, made = recording_metrics()
    student_handle, teacher_handle = LocalHandle(student), LocalHandle(teacher)
    gateway = Gateway(student_handle, teacher_handle, metrics=metrics)
    asyncio.run(gateway.reconfigure(gateway_user_config(parse_config(config))))
    return gateway, student_handle, teacher_handle, made


def _ask(gateway: Gateway, payload: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    return asyncio.run(gateway.answer(json.dumps(payload).encode(), "req-1", **kwargs))


def test_a_hung_teacher_costs_one_timeout_then_the_breaker_answers_at_once(tiny_pair: TinyPair) -> None:
    gateway, _, teacher, made = _gateway(tiny_pair, unsure, hang)
    for _ in range(2):
        started = time.monotonic()
        results = _ask(gateway, {"inputs": ["a", "b"]})["results"]
        assert time.monotonic() - started < 3.0  # cut at 0.3 s; the bound only says it did not hang
        assert [(r["served_by"], r["degraded_reason"]) for r in results] == [("student", "teacher_timeout")] * 2
    assert teacher.calls == 2
    results = _ask(gateway, {"inputs": "c"})["results"]  # breaker open: the teacher is not asked
    assert teacher.calls == 2 and results[0]["degraded_reason"] == "teacher_unavailable"
    assert gateway.describe()["resilience"]["breakers"]["teacher"] == "open"
    degraded = made["cascade_degraded_total"].values
    assert degraded[(("degraded_reason", "teacher_timeout"),)] == 4
    assert degraded[(("degraded_reason", "teacher_unavailable"),)] == 1
    failures = made["cascade_model_failures_total"].values
    assert failures[(("failure", "timeout"), ("role", "teacher"))] == 2
    assert failures[(("failure", "breaker_open"), ("role", "teacher"))] == 1
    with pytest.raises(Exception) as forced:  # route teacher: the client gets a 503 with Retry-After
        _ask(gateway, {"inputs": "d", "route": "teacher"})
    assert getattr(forced.value, "http_status", None) == 503 and forced.value.retry_after_s > 50  # type: ignore[attr-defined]


def test_a_teacher_that_raises_degrades_auto_and_fails_a_forced_request_with_a_500(tiny_pair: TinyPair) -> None:
    gateway, _, _, _ = _gateway(tiny_pair, unsure, broken)
    results = _ask(gateway, {"inputs": ["a"]})["results"]
    assert results[0]["degraded"] and results[0]["degraded_reason"] == "teacher_error"
    with pytest.raises(ModelError, match="the teacher failed") as caught:
        _ask(gateway, {"inputs": "a", "route": "teacher"})
    assert "CUDA" not in caught.value.message  # no internals to the client


def test_policy_fail_turns_a_hung_teacher_into_a_504(tiny_pair: TinyPair) -> None:
    gateway, _, _, _ = _gateway(tiny_pair, unsure, hang, resilience={"on_teacher_failure": "fail"})
    with pytest.raises(ModelTimeout, match="teacher did not answer"):
        _ask(gateway, {"inputs": "a"})


def test_a_hung_student_sends_the_request_to_the_teacher(tiny_pair: TinyPair) -> None:
    gateway, _, _, _ = _gateway(tiny_pair, hang, sure)
    results = _ask(gateway, {"inputs": ["a", "b"]})["results"]
    assert [(r["served_by"], r["degraded_reason"]) for r in results] == [("teacher", "student_timeout")] * 2


def test_a_replica_that_died_mid_call_is_retried_once(tiny_pair: TinyPair) -> None:
    died = {"yet": False}

    async def dies_once(texts: list[str]) -> np.ndarray:
        if not died["yet"]:
            died["yet"] = True
            raise ActorDiedError()
        return await sure(texts)

    gateway, _, teacher, _ = _gateway(tiny_pair, unsure, dies_once)
    results = _ask(gateway, {"inputs": "a"})["results"]
    assert results[0]["served_by"] == "teacher" and not results[0]["degraded"] and teacher.calls == 2


def test_the_request_deadline_bounds_every_call(tiny_pair: TinyPair) -> None:
    gateway, _, _, _ = _gateway(
        tiny_pair,
        hang,
        hang,
        resilience={"student_timeout_s": 30, "teacher_timeout_s": 30, "request_timeout_s": 0.4},
    )
    started = time.monotonic()
    with pytest.raises(ModelTimeout):
        _ask(gateway, {"inputs": "a"})
    assert time.monotonic() - started < 5.0


def test_a_keys_teacher_budget_degrades_auto_and_refuses_forced(tiny_pair: TinyPair) -> None:
    keys = {"keys": [{"name": "app", "sha256": hash_key("k"), "teacher_texts_per_minute": 2}]}
    gateway, _, teacher, made = _gateway(tiny_pair, unsure, sure, auth=keys)
    caller = gateway.identify("Bearer k")
    first = _ask(gateway, {"inputs": ["a", "b"]}, caller=caller)["results"]
    assert {r["served_by"] for r in first} == {"teacher"}
    second = _ask(gateway, {"inputs": ["c"]}, caller=caller)["results"]
    assert second[0]["served_by"] == "student" and second[0]["degraded_reason"] == "teacher_budget"
    assert teacher.calls == 1
    assert made["cascade_key_requests_total"].values[(("key", "app"),)] == 2
    assert made["cascade_key_teacher_seconds_total"].values[(("key", "app"),)] > 0
    with pytest.raises(RateLimited):
        caller.take_teacher_texts(1)


def test_models_shows_no_path_of_the_server(tiny_pair: TinyPair) -> None:
    gateway, _, _, _ = _gateway(tiny_pair, sure, sure)
    roles = gateway.describe()["roles"]
    assert roles["student"]["model"] == tiny_pair.student.name
    assert str(tiny_pair.student.parent) not in json.dumps(gateway.describe())


def test_answers_match_the_documented_response_model(tiny_pair: TinyPair) -> None:
    """The ingress returns the gateway's answer as is (no FastAPI response validation): it must be the
    shape /openapi.json documents, for plain, escalated and degraded answers alike."""
    from serving.schemas import ClassifyResponse

    for teacher in (sure, broken):
        gateway, _, _, _ = _gateway(tiny_pair, unsure, teacher)
        for route in ("auto", "student"):
            answer = _ask(gateway, {"inputs": ["a", "b"], "route": route})
            assert ClassifyResponse.model_validate(answer).model_dump(mode="json") == answer

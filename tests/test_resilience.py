"""Circuit breaker and rate limiter state, and the cascade's degraded answers when a model cannot answer."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import numpy as np
import pytest

from router import CascadePolicy, Signal
from router.breaker import CircuitBreaker
from router.quota import RateLimiter
from serving.cascade import run_cascade
from serving.errors import ModelTimeout, ModelUnavailable, Overloaded, RateLimited

LABELS = ["a", "b"]
SURE = [4.0, -4.0]  # max prob ~1: the student answers
UNSURE = [0.1, 0.0]  # max prob ~0.52: escalated at threshold 0.7


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _state(breaker: CircuitBreaker) -> str:
    return breaker.state


def test_breaker_opens_after_failures_in_a_row_and_probes_once_after_open_s() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=3, open_s=5.0, clock=clock)
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # a success in between: the count starts over
    breaker.record_failure()
    breaker.record_failure()
    assert _state(breaker) == "closed" and breaker.allow()
    breaker.record_failure()
    assert _state(breaker) == "open" and not breaker.allow()
    assert breaker.retry_after_s == pytest.approx(5.0)
    clock.now += 4.0
    assert not breaker.allow() and breaker.retry_after_s == pytest.approx(1.0)
    clock.now += 1.0
    assert _state(breaker) == "half_open"
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # only one at a time
    breaker.record_failure()  # the probe failed: open for another open_s
    assert _state(breaker) == "open" and breaker.retry_after_s == pytest.approx(5.0)
    clock.now += 5.0
    assert breaker.allow()
    breaker.record_success()
    assert _state(breaker) == "closed" and breaker.allow() and breaker.allow()


def test_a_probe_that_says_nothing_lets_the_next_one_try() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=1, open_s=1.0, clock=clock)
    breaker.record_failure()
    clock.now += 1.0
    assert breaker.allow()
    breaker.release_probe()  # cancelled, or the queue was full
    assert breaker.allow()


def test_breaker_rejects_settings_that_cannot_work() -> None:
    with pytest.raises(ValueError, match="failures"):
        CircuitBreaker(failures=0, open_s=1.0)


def test_rate_limiter_allows_a_burst_then_refills_at_its_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(per_minute=60, burst=3, clock=clock)
    assert [limiter.try_take() for _ in range(4)] == [True, True, True, False]
    assert limiter.wait_s() == pytest.approx(1.0)
    clock.now += 0.5
    assert not limiter.try_take()
    clock.now += 0.5
    assert limiter.try_take()
    assert not limiter.try_take(2)  # all or nothing
    clock.now += 100
    assert limiter.available() == pytest.approx(3.0)  # never more than the burst
    assert limiter.wait_s(4) == float("inf")


def _logits(rows: list[list[float]]) -> np.ndarray:
    return np.array(rows, dtype=np.float32)


async def _ok(rows: list[list[float]], texts: list[str]) -> np.ndarray:
    assert len(rows) == len(texts)
    return _logits(rows)


def _cascade(student: object, teacher: object, route: str = "auto", degrade: bool = True) -> object:
    return asyncio.run(
        run_cascade(
            ["x", "y", "z"],
            route,  # type: ignore[arg-type]
            policy=CascadePolicy(0.7, Signal.MAX_PROB),
            labels=LABELS,
            teacher_temperature=1.0,
            student=student,  # type: ignore[arg-type]
            teacher=teacher,  # type: ignore[arg-type]
            degrade=degrade,
        )
    )


def _failing(error: Exception) -> Callable[[list[str]], Awaitable[np.ndarray]]:
    async def call(texts: list[str]) -> np.ndarray:
        raise error

    return call


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (ModelTimeout("slow"), "teacher_timeout"),
        (ModelUnavailable("down"), "teacher_unavailable"),
        (Overloaded("full"), "teacher_overloaded"),
        (RateLimited("budget"), "teacher_budget"),
    ],
)
def test_escalated_texts_get_the_students_answer_marked_degraded(error: Exception, reason: str) -> None:
    outcome = _cascade(lambda texts: _ok([SURE, UNSURE, UNSURE], texts), _failing(error))
    results = outcome.results  # type: ignore[attr-defined]
    assert [r.served_by for r in results] == ["student"] * 3
    assert [r.degraded for r in results] == [False, True, True]
    assert [r.degraded_reason for r in results] == [None, reason, reason]
    assert outcome.degraded_rows == (1, 2) and outcome.teacher_rows == []  # type: ignore[attr-defined]


def test_policy_fail_answers_the_teachers_error_instead() -> None:
    with pytest.raises(ModelTimeout):
        _cascade(lambda texts: _ok([UNSURE] * 3, texts), _failing(ModelTimeout("slow")), degrade=False)


def test_a_failed_student_hands_every_text_to_the_teacher_on_route_auto_only() -> None:
    outcome = _cascade(_failing(ModelUnavailable("down")), lambda texts: _ok([SURE, SURE, UNSURE], texts))
    results = outcome.results  # type: ignore[attr-defined]
    assert [r.served_by for r in results] == ["teacher"] * 3
    assert {r.degraded_reason for r in results} == {"student_unavailable"}
    assert not any(r.escalated for r in results)
    with pytest.raises(ModelUnavailable):
        _cascade(_failing(ModelUnavailable("down")), lambda texts: _ok([SURE] * 3, texts), route="student")
    with pytest.raises(ModelTimeout):  # both down: the teacher's error is the answer
        _cascade(_failing(ModelUnavailable("down")), _failing(ModelTimeout("slow")))


def test_a_forced_teacher_route_never_switches_model() -> None:
    with pytest.raises(ModelUnavailable):
        _cascade(lambda texts: _ok([SURE] * 3, texts), _failing(ModelUnavailable("down")), route="teacher")


def test_errors_that_are_not_a_models_failure_are_not_degraded() -> None:
    with pytest.raises(ZeroDivisionError):
        _cascade(lambda texts: _ok([UNSURE] * 3, texts), _failing(ZeroDivisionError()))

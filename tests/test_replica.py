"""The model runner's batches: one model call for concurrent callers, each answered with its own rows.

A text that makes the model raise fails only its own call; a caller whose deadline passed is not
computed; a lone call runs at once, and ``batch_wait_timeout_s`` holds it for company.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from serving import constants as c
from serving.coalescing import DeadlinePassed
from serving.config import ModelSettings
from serving.replica import ModelRunner, runs_on_event_loop
from tests.builders import TinyPair


class Recording:
    """The runner's model, recording every call; raises on a poison text, as a tokenizer's edge case would."""

    def __init__(self, runner: ModelRunner) -> None:
        self.calls: list[list[str]] = []
        self.threads: list[int] = []
        self._model = runner.backend.logits
        runner.backend.logits = self  # type: ignore[method-assign]

    def alone(self, texts: list[str]) -> np.ndarray:
        """The model's logits for ``texts``, unrecorded."""
        return self._model(texts)

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        self.threads.append(threading.get_ident())
        if any("poison" in text for text in texts):
            raise RuntimeError("the tokenizer choked")
        return self._model(texts)


def runner_for(
    tiny_pair: TinyPair, wait_s: float = 0.0, max_batch_size: int = 8, run_on: str = "worker_thread"
) -> tuple[ModelRunner, Recording]:
    settings = ModelSettings.model_validate(
        {
            "model": str(tiny_pair.student),
            "max_length": 32,
            "batching": {"max_batch_size": max_batch_size, "batch_wait_timeout_s": wait_s, "run_on": run_on},
        }
    )
    runner = ModelRunner("student", settings)
    return runner, Recording(runner)


async def _concurrently(runner: ModelRunner, calls: list[list[str]]) -> list[tuple[np.ndarray, float] | BaseException]:
    """The calls at once, the first alone in the model while the others queue behind it."""
    return await asyncio.gather(*(runner.logits(texts) for texts in calls), return_exceptions=True)


def test_concurrent_calls_share_a_model_call_split_back_in_order(tiny_pair: TinyPair) -> None:
    runner, model = runner_for(tiny_pair)
    calls = [["first"], ["a"], ["bb", "ccc"], ["dddd"]]
    answers = asyncio.run(_concurrently(runner, calls))
    assert model.calls == [["first"], ["a", "bb", "ccc", "dddd"]]  # the first ran alone; the rest waited for it
    assert threading.get_ident() not in model.threads  # in the worker thread, the loop free meanwhile
    for texts, answer in zip(calls, answers, strict=True):
        assert not isinstance(answer, BaseException)
        logits, seconds = answer
        np.testing.assert_allclose(logits, model.alone(texts))
        assert seconds > 0  # each call reports its share of the batch's compute


def test_a_failing_text_fails_only_its_own_call(tiny_pair: TinyPair) -> None:
    runner, model = runner_for(tiny_pair)
    first, fine, poisoned, other = asyncio.run(
        _concurrently(runner, [["first"], ["fine one"], ["poison pill"], ["fine two", "three"]])
    )
    assert isinstance(poisoned, RuntimeError)
    for answer in (first, fine, other):
        assert not isinstance(answer, BaseException)
    assert ["fine one", "poison pill", "fine two", "three"] in model.calls  # tried together first, then alone
    assert ["fine two", "three"] in model.calls


def test_a_lone_failing_call_raises(tiny_pair: TinyPair) -> None:
    runner, _ = runner_for(tiny_pair)
    with pytest.raises(RuntimeError, match="choked"):
        asyncio.run(runner.logits(["poison"]))


def test_calls_whose_deadline_passed_are_dropped_unrun(tiny_pair: TinyPair) -> None:
    """A backlog (a replica that was stopped, an overload) is not computed for callers that are gone."""
    runner, model = runner_for(tiny_pair)

    async def scenario() -> list[tuple[np.ndarray, float] | BaseException]:
        now = time.time()
        calls = [(["first"], None), (["gone"], now - 1), (["live"], now + 60), (["no deadline"], None)]
        return list(await asyncio.gather(*(runner.logits(*call) for call in calls), return_exceptions=True))

    first, gone, live, no_deadline = asyncio.run(scenario())
    assert isinstance(gone, DeadlinePassed)
    assert not any(isinstance(answer, BaseException) for answer in (first, live, no_deadline))
    assert model.calls == [["first"], ["live", "no deadline"]]


def test_a_lone_late_call_is_not_computed(tiny_pair: TinyPair) -> None:
    runner, model = runner_for(tiny_pair)
    with pytest.raises(DeadlinePassed):
        asyncio.run(runner.logits(["late"], time.time() - 1))
    assert model.calls == []


def test_the_batch_wait_holds_a_lone_call_until_the_batch_fills(tiny_pair: TinyPair) -> None:
    """``batch_wait_timeout_s`` holds a call for company; a full batch goes at once."""
    runner, model = runner_for(tiny_pair, wait_s=30.0, max_batch_size=3)

    async def scenario() -> None:
        first = asyncio.create_task(runner.logits(["one"]))
        await asyncio.sleep(0.05)  # many loop turns: without the wait, the lone call would have run
        assert model.calls == []
        async with asyncio.timeout(10):  # far below the 30 s wait: these texts fill the batch
            await asyncio.gather(first, runner.logits(["two", "three"]))

    asyncio.run(scenario())
    assert model.calls == [["one", "two", "three"]]


def test_on_the_event_loop_calls_that_arrive_together_share_one_model_call(tiny_pair: TinyPair) -> None:
    """No hop to a thread, and no batch of one: the call waits a tenth of a millisecond for company."""
    runner, model = runner_for(tiny_pair, run_on="event_loop")
    calls = [["first"], ["a"], ["bb", "ccc"], ["dddd"]]
    answers = asyncio.run(_concurrently(runner, calls))
    assert model.calls == [["first", "a", "bb", "ccc", "dddd"]]
    assert model.threads == [threading.get_ident()]  # asyncio.run's loop runs in this thread
    for texts, answer in zip(calls, answers, strict=True):
        assert not isinstance(answer, BaseException)
        np.testing.assert_allclose(answer[0], model.alone(texts), rtol=1e-5, atol=1e-6)


def test_on_the_event_loop_a_failing_text_still_fails_only_its_own_call(tiny_pair: TinyPair) -> None:
    runner, _ = runner_for(tiny_pair, run_on="event_loop")
    fine, poisoned = asyncio.run(_concurrently(runner, [["fine"], ["poison pill"]]))
    assert isinstance(poisoned, RuntimeError)
    assert not isinstance(fine, BaseException)


def test_auto_keeps_only_a_model_whose_full_batch_is_fast_on_the_event_loop() -> None:
    limit = c.EVENT_LOOP_MAX_BATCH_S
    assert runs_on_event_loop("auto", seconds_per_text=limit / 32, max_batch_size=32)
    assert not runs_on_event_loop("auto", seconds_per_text=limit / 32, max_batch_size=33)
    assert runs_on_event_loop("event_loop", 1.0, 32)  # the operator's choice holds, however slow
    assert not runs_on_event_loop("worker_thread", 0.0, 1)


def test_the_replica_says_where_its_batches_run(tiny_pair: TinyPair) -> None:
    assert runner_for(tiny_pair, run_on="event_loop")[0].info()["batches_run_on"] == "event_loop"
    assert runner_for(tiny_pair, run_on="worker_thread")[0].info()["batches_run_on"] == "worker_thread"

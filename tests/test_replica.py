"""A text that makes the model raise fails only its own call, not the others batched beside it."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from serving.replica import answer_batch
from tests.builders import TinyPair


def _model(texts: list[str]) -> np.ndarray:
    """Logits from the text's length; raises on a poison text, as a tokenizer's edge case would."""
    if any("poison" in text for text in texts):
        raise RuntimeError("the tokenizer choked")
    return np.asarray([[len(text), -len(text)] for text in texts], dtype=np.float32)


def test_a_failing_text_fails_only_its_own_call() -> None:
    calls = [["fine one"], ["poison pill"], ["fine two", "three"]]
    first, second, third = asyncio.run(answer_batch(_model, calls))
    assert isinstance(second, RuntimeError)
    assert not isinstance(first, Exception) and not isinstance(third, Exception)
    np.testing.assert_array_equal(first[0], _model(["fine one"]))
    np.testing.assert_array_equal(third[0], _model(["fine two", "three"]))
    assert first[1] >= 0 and third[1] >= 0  # each call still reports the compute it used


def test_a_healthy_batch_is_one_model_call_split_back_in_order() -> None:
    seen: list[list[str]] = []

    def counting(texts: list[str]) -> np.ndarray:
        seen.append(texts)
        return _model(texts)

    results = asyncio.run(answer_batch(counting, [["a"], ["bb", "ccc"]]))
    assert seen == [["a", "bb", "ccc"]]
    assert [r[0].shape[0] for r in results if not isinstance(r, Exception)] == [1, 2]
    np.testing.assert_array_equal(results[1][0], _model(["bb", "ccc"]))  # type: ignore[index]


def test_a_lone_failing_call_raises() -> None:
    with pytest.raises(RuntimeError, match="choked"):
        asyncio.run(answer_batch(_model, [["poison"]]))


def test_calls_whose_deadline_passed_are_dropped_unrun(tiny_pair: TinyPair) -> None:
    """A backlog (a replica that was stopped, an overload) is not computed for callers that are gone."""
    import asyncio
    import time

    from serving.config import ModelSettings
    from serving.replica import DeadlinePassed, ModelRunner

    runner = ModelRunner("student", ModelSettings(model=str(tiny_pair.student), max_length=32))
    ran: list[list[str]] = []
    model = runner.backend.logits

    def recording(texts: list[str]) -> np.ndarray:
        ran.append(list(texts))
        return model(texts)

    runner.backend.logits = recording  # type: ignore[method-assign]
    now = time.time()
    results = asyncio.run(runner.answer_live([(["gone"], now - 1), (["live"], now + 60), (["no deadline"], None)]))
    assert isinstance(results[0], DeadlinePassed)
    assert not isinstance(results[1], Exception) and not isinstance(results[2], Exception)
    assert ran == [["live", "no deadline"]]

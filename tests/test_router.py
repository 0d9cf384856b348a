"""The pure policy: signals on logits whose right answer is known, and the escalation rule."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from router import CascadePolicy, Signal, confidence, softmax
from router.signals import CLOSED_FORM_SIGNALS


def test_softmax_rows_sum_to_one_and_temperature_softens() -> None:
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    sharp, soft = softmax(logits, 1.0), softmax(logits, 4.0)
    assert np.allclose(sharp.sum(axis=1), 1.0)
    assert soft[0, 0] < sharp[0, 0]
    assert np.allclose(sharp[1], 1 / 3)


def test_softmax_is_stable_for_huge_logits() -> None:
    probs = softmax(np.array([[1000.0, 0.0]]))
    assert np.isfinite(probs).all() and probs[0, 0] == pytest.approx(1.0)


@pytest.mark.parametrize("signal", CLOSED_FORM_SIGNALS)
def test_signals_are_one_for_one_hot_and_lowest_for_uniform(signal: Signal) -> None:
    one_hot = np.array([[1.0, 0.0, 0.0, 0.0]])
    uniform = np.full((1, 4), 0.25)
    assert confidence(one_hot, signal)[0] == pytest.approx(1.0)
    expected_uniform = {Signal.MAX_PROB: 0.25, Signal.MARGIN: 0.0, Signal.ENTROPY: 0.0}[signal]
    assert confidence(uniform, signal)[0] == pytest.approx(expected_uniform, abs=1e-9)


def test_margin_and_entropy_known_values() -> None:
    probs = np.array([[0.5, 0.3, 0.2]])
    assert confidence(probs, "margin")[0] == pytest.approx(0.2)
    entropy = -(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2))
    assert confidence(probs, "entropy")[0] == pytest.approx(1 - entropy / math.log(3))


def test_threshold_zero_never_escalates_and_above_one_always_does() -> None:
    logits = np.random.default_rng(0).normal(size=(200, 5)) * 3
    assert not CascadePolicy(0.0).judge(logits).escalate.any()
    assert CascadePolicy(1.01).judge(logits).escalate.all()


def test_escalates_exactly_the_rows_below_threshold() -> None:
    logits = np.log(np.array([[0.9, 0.1], [0.6, 0.4], [0.55, 0.45]]))
    verdict = CascadePolicy(0.6).judge(logits)
    assert verdict.escalate.tolist() == [False, False, True]
    assert verdict.escalation_rate == pytest.approx(1 / 3)


def test_temperature_changes_the_decision() -> None:
    logits = np.log(np.array([[0.8, 0.2]]))
    assert not CascadePolicy(0.7, temperature=1.0).judge(logits).escalate[0]
    assert CascadePolicy(0.7, temperature=3.0).judge(logits).escalate[0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"threshold": -0.1}, "threshold must be >= 0"), ({"threshold": 0.5, "temperature": 0}, "temperature")],
)
def test_policy_rejects_bad_settings(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CascadePolicy(**kwargs)


def test_unknown_signal_is_rejected() -> None:
    with pytest.raises(ValueError, match="cosine"):
        CascadePolicy(0.5, signal="cosine")  # type: ignore[arg-type]


def test_logits_must_be_two_dimensional() -> None:
    with pytest.raises(ValueError, match="shape"):
        softmax(np.array([1.0, 2.0]))

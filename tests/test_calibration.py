"""Calibration and thresholds on synthetic data whose right answer is known."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from router.calibration import expected_calibration_error, fit_temperature, negative_log_likelihood
from router.cost import CostModel
from router.signals import softmax
from router.tradeoff import (
    Outcomes,
    choose_threshold,
    oracle,
    oracle_at,
    oracle_curve,
    random_routing,
    savings_share_of_oracle,
    sweep,
    wilson_interval,
)


def _calibrated_source(n: int = 20_000, k: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose softmax is the true label distribution: labels are drawn from it."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(n, k))
    probs = softmax(logits)
    labels = np.array([rng.choice(k, p=p) for p in probs])
    return logits, labels


def test_fitted_temperature_is_one_for_a_calibrated_source() -> None:
    logits, labels = _calibrated_source()
    assert fit_temperature(logits, labels) == pytest.approx(1.0, abs=0.05)
    assert expected_calibration_error(softmax(logits), labels) < 0.02


@pytest.mark.parametrize("factor", [2.0, 3.5])
def test_fitted_temperature_undoes_known_over_confidence(factor: float) -> None:
    logits, labels = _calibrated_source(seed=1)
    over_confident = logits * factor
    temperature = fit_temperature(over_confident, labels)
    assert temperature == pytest.approx(factor, rel=0.08)
    before = expected_calibration_error(softmax(over_confident), labels)
    after = expected_calibration_error(softmax(over_confident, temperature), labels)
    assert after < before / 3
    assert negative_log_likelihood(over_confident, labels, temperature) < negative_log_likelihood(
        over_confident, labels
    )


def test_fit_temperature_rejects_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="as many labels"):
        fit_temperature(np.zeros((3, 2)), np.zeros(2, dtype=int))


COST = CostModel(
    student_seconds_per_request=0.001,
    teacher_seconds_per_request=0.01,
    student_dollars_per_hour=3.6,
    teacher_dollars_per_hour=3.6,
)


def test_cost_model_known_values() -> None:
    assert COST.student_dollars == pytest.approx(0.001 * 3.6 / 3600)
    assert COST.per_thousand(COST.cascade_dollars(0.5)) == pytest.approx(1000 * (1e-6 + 0.5 * 1e-5))
    with pytest.raises(ValueError, match="teacher_seconds_per_request"):
        CostModel(0.1, -1.0)


# Ten requests: the student is wrong on the three least confident, the teacher always right.
CONFIDENCE = [0.1, 0.2, 0.3, 0.6, 0.7, 0.75, 0.8, 0.9, 0.95, 0.99]
STUDENT_RIGHT = [False, False, False, True, True, True, True, True, True, True]
OUTCOMES = Outcomes.from_arrays(CONFIDENCE, STUDENT_RIGHT)


def test_sweep_spans_student_only_to_teacher_only() -> None:
    points = sweep(OUTCOMES, COST)
    assert points[0].escalation_rate == 0 and points[0].quality == pytest.approx(0.7)
    assert points[-1].escalation_rate == 1 and points[-1].quality == 1
    assert all(a.dollars_per_1000 <= b.dollars_per_1000 for a, b in itertools.pairwise(points))


def test_thresholds_for_each_kind_of_target() -> None:
    lossless = choose_threshold(OUTCOMES, COST, "max_quality_loss", 0.0)
    assert lossless.quality == 1.0 and lossless.escalation_rate == pytest.approx(0.3)  # exactly the oracle here
    assert choose_threshold(OUTCOMES, COST, "max_escalation", 0.2).quality == pytest.approx(0.9)
    budget = COST.per_thousand(COST.cascade_dollars(0.1))
    assert choose_threshold(OUTCOMES, COST, "max_cost", budget).escalation_rate == pytest.approx(0.1)
    with pytest.raises(ValueError, match="no threshold meets"):
        choose_threshold(OUTCOMES, COST, "max_cost", 0.0)


def test_an_escalation_share_is_spent_even_where_the_dev_set_shows_nothing_to_gain() -> None:
    """A student as good as the teacher on dev: max_escalation keeps τ at 0, escalation_share does not."""
    confidence = np.linspace(0.5, 0.95, 20)
    tied = Outcomes.from_arrays(confidence, np.ones(20, bool), np.ones(20, bool))
    assert choose_threshold(tied, COST, "max_escalation", 0.15).escalation_rate == 0.0
    share = choose_threshold(tied, COST, "escalation_share", 0.15)
    assert share.escalation_rate == pytest.approx(0.15)  # the three least confident of twenty
    assert share.threshold == pytest.approx(confidence[3], abs=1e-6)


def test_the_oracle_escalates_only_what_the_teacher_alone_gets_right_so_no_cascade_beats_it() -> None:
    """Ten texts: the student misses two, the teacher gets one of those right. Old oracle: escalate both."""
    student = np.array([True] * 8 + [False, False])
    teacher = np.array([True] * 9 + [False])  # right on the 9th (student wrong), wrong on the 10th
    confidence = np.array([0.9] * 8 + [0.1, 0.5])  # the cascade's lowest confidence is the helpful one
    outcomes = Outcomes.from_arrays(confidence, student, teacher)
    best = oracle(outcomes, COST)
    assert best.escalation_rate == pytest.approx(0.1) and best.quality == pytest.approx(0.9)
    cascade = outcomes.at(0.2, COST)  # escalates exactly the 9th text
    assert cascade.escalation_rate == pytest.approx(0.1) and cascade.quality == pytest.approx(0.9)
    assert savings_share_of_oracle(cascade, outcomes, COST) == pytest.approx(
        1.0
    )  # the old oracle: 0.008 / 0.007 = 1.14
    assert [p.escalation_rate for p in oracle_curve(outcomes, COST)] == pytest.approx([0.0, 0.1])
    assert oracle_at(outcomes, COST, 0.85).escalation_rate == pytest.approx(0.1)  # 0.85 needs one text
    assert oracle_at(outcomes, COST, 0.7).escalation_rate == 0.0  # the student alone is above it


def test_no_threshold_earns_more_than_the_oracles_savings() -> None:
    rng = np.random.default_rng(7)
    for _ in range(20):
        n = int(rng.integers(20, 300))
        outcomes = Outcomes.from_arrays(rng.random(n), rng.random(n) < 0.8, rng.random(n) < 0.9)
        shares = [savings_share_of_oracle(p, outcomes, COST) for p in sweep(outcomes, COST)]
        assert max(shares) <= 1.0 + 1e-9


def test_oracle_random_and_share_of_savings() -> None:
    best = oracle(OUTCOMES, COST)
    assert best.escalation_rate == pytest.approx(0.3) and best.quality == 1.0
    assert random_routing(OUTCOMES, 0.3, COST).quality == pytest.approx(0.7 + 0.3 * 0.3)
    chosen = choose_threshold(OUTCOMES, COST, "max_quality_loss", 0.0)
    assert savings_share_of_oracle(chosen, OUTCOMES, COST) == pytest.approx(1.0)
    # Escalating everything pays the student on top of the teacher: negative savings.
    everything = OUTCOMES.at(2.0, COST)
    assert savings_share_of_oracle(everything, OUTCOMES, COST) == pytest.approx((0.01 - 0.011) / (0.01 - 0.004))


def test_wilson_interval_known_value() -> None:
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-3) and high == pytest.approx(0.5962, abs=1e-3)
    assert math.isclose(sum(wilson_interval(0, 10)), wilson_interval(0, 10)[1])


@pytest.mark.parametrize("rows", [50, 100_000])
def test_the_sweep_equals_the_point_by_point_definition(rows: int) -> None:
    """Sorted prefix sums give exactly what escalating ``confidence < t`` text by text gives, at 100k rows too."""
    rng = np.random.default_rng(rows)
    confidence = rng.random(rows).round(3)  # ties, as real confidences have
    student, teacher = rng.random(rows) < confidence, rng.random(rows) < 0.9
    outcomes = Outcomes.from_arrays(confidence, student, teacher)
    cost = CostModel(0.001, 0.01)
    points = sweep(outcomes, cost, confidence=0.9)
    assert len(points) == len(np.unique(confidence)) + 2
    for point in [points[0], points[-1], *(points[int(i)] for i in rng.integers(0, len(points), size=20))]:
        assert point == outcomes.at(point.threshold, cost, confidence=0.9)
    assert points[0].escalation_rate == 0.0 and points[-1].escalation_rate == 1.0

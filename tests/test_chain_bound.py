"""A chain keeps its promise on new texts: thresholds chosen among thousands are tested on other texts."""

from __future__ import annotations

import numpy as np
import pytest

from distill.chain import ChainData, StageOutputs, StageRule, calibrate_chain, chain_outcomes, stage_scores
from router.chain import ESCALATE_ALL, ChainOutcomes, choose_chain, evaluate, fixed_sequence, label_free_order

TARGET_POINTS = 1.0
CONFIDENCE = 0.9


def _population(n: int, rng: np.random.Generator) -> ChainData:
    """Two students whose confidence tells their errors only loosely, and a teacher right 92% of the time."""
    k = 4
    gold = rng.integers(0, k, n)

    def model(accuracy: float, sharpness: float, seconds: float, name: str) -> StageOutputs:
        right = rng.random(n) < accuracy
        answer = np.where(right, gold, (gold + rng.integers(1, k, n)) % k)
        logits = rng.normal(0, 1, (n, k))
        # a right answer tends to be surer, but not always: errors overlap the right answers' confidence
        logits[np.arange(n), answer] += sharpness * (1.0 + right * 0.8 + rng.normal(0, 0.9, n))
        return StageOutputs(name, logits, seconds)

    students = (model(0.84, 2.0, 0.001, "bag"), model(0.89, 2.0, 0.004, "layers"))
    lengths = rng.integers(5, 90, n).astype(np.float64)
    return ChainData(students, model(0.92, 3.0, 0.02, "teacher"), gold, lengths)


def _true_gap_points(population: ChainData, rules: tuple[StageRule, ...], thresholds: tuple[float, ...]) -> float:
    outcomes = chain_outcomes(population, rules, student_price=1.0, teacher_price=1.0)
    point = evaluate(outcomes, thresholds)
    return 100 * (outcomes.teacher_quality - point.quality)


@pytest.mark.slow
def test_the_chain_keeps_its_promise_where_the_cheapest_passing_point_does_not() -> None:
    """Tested in a label-free order, the chosen thresholds break the target about as often as the confidence
    allows; the cheapest of all candidates whose bound passes on the same texts breaks it more often."""
    rng = np.random.default_rng(7)
    population = _population(60_000, rng)
    broken = {"label-free order": 0, "cheapest passing": 0}
    draws = 120
    for draw in range(draws):
        rows = rng.choice(population.gold.size, 180, replace=False)  # under 200: closed-form rules only
        sample = population.subset(rows)
        chain = calibrate_chain(
            sample, TARGET_POINTS, student_price=1.0, teacher_price=1.0, confidence_level=CONFIDENCE, seed=draw
        )
        outcomes = ChainOutcomes.from_arrays(
            stage_scores(sample, chain.rules), sample.correct(), sample.stage_dollars(1.0, 1.0)
        )
        cheapest = choose_chain(outcomes, TARGET_POINTS, confidence=CONFIDENCE)
        broken["label-free order"] += _true_gap_points(population, chain.rules, chain.thresholds) > TARGET_POINTS
        broken["cheapest passing"] += _true_gap_points(population, chain.rules, cheapest.thresholds) > TARGET_POINTS
    # At 90% confidence about 10% of calibration sets may break the promise (binomial slack for 120 draws).
    assert broken["label-free order"] / draws <= 0.17, broken
    assert broken["cheapest passing"] > broken["label-free order"], broken


def test_fixed_sequence_stops_at_the_first_failure_and_starts_from_the_teacher() -> None:
    n = 200
    scores = (np.linspace(0, 1, n),)
    teacher = np.ones(n, dtype=bool)
    student = np.linspace(0, 1, n) > 0.3  # wrong on the least confident 30%
    outcomes = ChainOutcomes.from_arrays(scores, (student, teacher), (0.1, 1.0))
    sequence = [(0.9,), (0.5,), (0.1,), (0.35,)]  # the last would pass again: never reached
    chosen = fixed_sequence(outcomes, sequence, 1.0, confidence=0.9)
    assert chosen.thresholds == (0.5,)
    assert fixed_sequence(outcomes, [(0.0,)], 1.0, confidence=0.9).thresholds == (ESCALATE_ALL,)


def test_the_order_ignores_labels_and_runs_from_surest_to_cheapest() -> None:
    rng = np.random.default_rng(1)
    n = 300
    scores = (rng.random(n), rng.random(n))
    dollars = (0.1, 0.3, 1.0)

    def outcomes(seed: int) -> ChainOutcomes:
        labels = np.random.default_rng(seed)
        correct = tuple(labels.random(n) < p for p in (0.8, 0.85, 0.9))
        return ChainOutcomes.from_arrays(scores, correct, dollars)

    order = label_free_order(outcomes(0), scores)
    assert order == label_free_order(outcomes(1), scores)  # other labels, same order
    costs = [evaluate(outcomes(0), thresholds).dollars_per_1000 for thresholds in order]
    assert costs == sorted(costs, reverse=True) and len(order) > 10


def test_a_middle_stage_that_keeps_nothing_is_neither_called_nor_paid() -> None:
    n = 50
    outcomes = ChainOutcomes.from_arrays(
        (np.full(n, 0.5), np.full(n, 0.9)), (np.ones(n, bool), np.ones(n, bool), np.ones(n, bool)), (0.1, 0.3, 1.0)
    )
    assert evaluate(outcomes, (ESCALATE_ALL, ESCALATE_ALL)).dollars_per_1000 == pytest.approx(1000 * 1.1)
    assert evaluate(outcomes, (ESCALATE_ALL, 0.95)).dollars_per_1000 == pytest.approx(1000 * 1.4)

"""A chain keeps its promise on new texts: thresholds chosen among thousands are tested on other texts."""

from __future__ import annotations

import numpy as np
import pytest

from distill.chain import ChainData, StageOutputs, calibrate_chain, chain_outcomes
from router.chain import ESCALATE_ALL, ChainOutcomes, cost_frontier, evaluate, fixed_sequence

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


def _true_gap_points(population: ChainData, calibration: object) -> float:
    outcomes = chain_outcomes(population, calibration.rules, student_price=1.0, teacher_price=1.0)  # type: ignore[attr-defined]
    point = evaluate(outcomes, calibration.thresholds)  # type: ignore[attr-defined]
    return 100 * (outcomes.teacher_quality - point.quality)


@pytest.mark.slow
def test_the_tested_chain_keeps_its_promise_where_choosing_and_measuring_on_the_same_texts_does_not() -> None:
    rng = np.random.default_rng(7)
    population = _population(60_000, rng)
    broken = {"tested": 0, "chosen on the same texts": 0}
    draws = 120
    for draw in range(draws):
        rows = rng.choice(population.gold.size, 180, replace=False)  # under 200: closed-form rules only
        sample = population.subset(rows)
        common = {"student_price": 1.0, "teacher_price": 1.0, "confidence_level": CONFIDENCE, "seed": draw}
        tested = calibrate_chain(sample, TARGET_POINTS, **common)  # type: ignore[arg-type]
        same = calibrate_chain(sample, TARGET_POINTS, test_share=0.0, **common)  # type: ignore[arg-type]
        broken["tested"] += _true_gap_points(population, tested) > TARGET_POINTS
        broken["chosen on the same texts"] += _true_gap_points(population, same) > TARGET_POINTS
    # At 90% confidence, at most ~10% of calibration sets may break the promise (binomial slack for 120 draws).
    assert broken["tested"] / draws <= 0.17, broken
    assert broken["chosen on the same texts"] > broken["tested"], broken


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


def test_the_cost_frontier_runs_from_surest_to_cheapest() -> None:
    rng = np.random.default_rng(1)
    outcomes = ChainOutcomes.from_arrays(
        (rng.random(300), rng.random(300)),
        (rng.random(300) < 0.8, rng.random(300) < 0.85, rng.random(300) < 0.9),
        (0.1, 0.3, 1.0),
    )
    from router.chain import chain_points

    frontier = cost_frontier(chain_points(outcomes, confidence=0.9))
    dollars = [p.dollars_per_1000 for p in frontier]
    bounds = [p.quality_loss_bound for p in frontier]
    assert dollars == sorted(dollars, reverse=True) and bounds == sorted(bounds)
    assert len(set(bounds)) == len(bounds)

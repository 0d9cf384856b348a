"""Cascades of more than two stages: cheap student → better student → teacher.

Each stage but the last has a score per text (higher = keep its answer) and a threshold; a text is
answered by the first stage whose score reaches its threshold, and by the teacher when none does. A
text pays for every stage it passed through. Calibration picks all thresholds together for the
overall target (``choose_chain``), so the first stage's threshold is chosen knowing what the second
can still catch.

``chain_oracle_at`` is the matching oracle: it knows which stage answers each text right, stops there,
and fixes the cheapest texts first, so nothing beats it at a given accuracy.

The grid search is exhaustive over per-stage candidate thresholds (quantiles of each stage's
scores); with two student stages it is two matrix products per quantity.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from router.bounds import paired_gap_upper_bound

GRID_SIZE = 120


@dataclass(frozen=True)
class ChainOutcomes:
    """Per text: each student stage's score, and whether each stage (the teacher last) is right."""

    scores: tuple[NDArray[np.float64], ...]
    correct: tuple[NDArray[np.bool_], ...]
    stage_dollars: tuple[float, ...]
    """Dollars per request of each stage alone, teacher last."""

    @classmethod
    def from_arrays(
        cls, scores: Sequence[ArrayLike], correct: Sequence[ArrayLike], stage_dollars: Sequence[float]
    ) -> ChainOutcomes:
        s = tuple(np.asarray(x, dtype=np.float64) for x in scores)
        c = tuple(np.asarray(x, dtype=bool) for x in correct)
        if not 1 <= len(s) <= 2 or len(c) != len(s) + 1 or len(stage_dollars) != len(c):
            raise ValueError("need 1 or 2 student stages: scores per student, correctness and cost per stage")
        if len({x.shape for x in s + c}) != 1 or s[0].ndim != 1 or s[0].size == 0:
            raise ValueError("every array must be 1-d, non-empty and of the same length")
        return cls(s, c, tuple(float(d) for d in stage_dollars))

    @property
    def size(self) -> int:
        return int(self.scores[0].size)

    @property
    def teacher_quality(self) -> float:
        return float(self.correct[-1].mean())


@dataclass(frozen=True)
class ChainPoint:
    thresholds: tuple[float, ...]
    served_share: tuple[float, ...]
    """Share of texts each stage answered, teacher last."""
    quality: float
    dollars_per_1000: float
    quality_loss_bound: float = float("nan")

    @property
    def escalation_rate(self) -> float:
        """Share that reached the teacher."""
        return self.served_share[-1]


def serving_stage(outcomes: ChainOutcomes, thresholds: tuple[float, ...]) -> NDArray[np.int64]:
    """Index of the stage that answers each text (``len(thresholds)`` for the teacher)."""
    stage = np.full(outcomes.size, len(thresholds), dtype=np.int64)
    for index in reversed(range(len(thresholds))):
        stage = np.where(outcomes.scores[index] >= thresholds[index], index, stage)
    return stage


def called_dollars(stage_dollars: Sequence[float], thresholds: Sequence[float]) -> list[float]:
    """Each stage's price, 0 for a later stage that keeps nothing (threshold > 1): the gateway skips it."""
    return [
        0.0 if 0 < index < len(thresholds) and thresholds[index] > 1 else float(dollars)
        for index, dollars in enumerate(stage_dollars)
    ]


def evaluate(outcomes: ChainOutcomes, thresholds: tuple[float, ...], *, confidence: float | None = None) -> ChainPoint:
    """Quality, cost and the share each stage served, for one set of thresholds."""
    stage = serving_stage(outcomes, thresholds)
    rows = np.arange(outcomes.size)
    correct = np.stack(outcomes.correct)[stage, rows]
    paid = np.cumsum(called_dollars(outcomes.stage_dollars, thresholds))[stage]
    teacher = outcomes.correct[-1]
    bound = float("nan")
    if confidence is not None:
        kept = stage < len(thresholds)
        worse, better = int((kept & teacher & ~correct).sum()), int((kept & correct & ~teacher).sum())
        bound = float(paired_gap_upper_bound(worse, better, outcomes.size, confidence, kept=int(kept.sum())))
    shares = np.bincount(stage, minlength=len(thresholds) + 1) / outcomes.size
    return ChainPoint(
        tuple(float(t) for t in thresholds),
        tuple(float(s) for s in shares),
        float(correct.mean()),
        1000 * float(paid.mean()),
        bound,
    )


def candidate_thresholds(scores: NDArray[np.float64], size: int = GRID_SIZE) -> NDArray[np.float64]:
    """0 (keep all), score quantiles, and just above the largest score (keep none)."""
    inner = np.unique(np.quantile(scores, np.linspace(0, 1, size)))
    return np.concatenate([[0.0], inner, [math.nextafter(float(scores.max()), math.inf)]])


ESCALATE_ALL = 2.0
"""A threshold above every score (all scores are in [0, 1]): the stage keeps nothing."""


def chain_points(outcomes: ChainOutcomes, *, confidence: float | None = None) -> list[ChainPoint]:
    """Every candidate set of thresholds, evaluated (with the quality-loss bound when ``confidence``)."""
    if len(outcomes.scores) == 1:
        grid = candidate_thresholds(outcomes.scores[0])
        return [evaluate(outcomes, (float(t),), confidence=confidence) for t in grid]
    return _two_student_grid(outcomes, confidence)


def _meets(outcomes: ChainOutcomes, point: ChainPoint, limit: float, confidence: float | None) -> bool:
    loss = outcomes.teacher_quality - point.quality if confidence is None else point.quality_loss_bound
    return loss <= limit


def choose_chain(
    outcomes: ChainOutcomes, max_quality_loss_points: float, *, confidence: float | None = None
) -> ChainPoint:
    """The cheapest thresholds whose quality loss (its upper bound, with ``confidence``) is within the target.

    Escalating everything (the teacher alone) always qualifies, so there is always an answer.
    """
    limit = max_quality_loss_points / 100 + 1e-12
    feasible = [p for p in chain_points(outcomes, confidence=confidence) if _meets(outcomes, p, limit, confidence)]
    return min(feasible, key=lambda p: (p.dollars_per_1000, -p.quality))


def label_free_order(outcomes: ChainOutcomes, right_chance: Sequence[NDArray[np.float64]]) -> list[tuple[float, ...]]:
    """Candidate thresholds from the surest to the cheapest, ordered without looking at a single label.

    ``right_chance``: each student stage's own estimate that its answer is right, per text (its
    calibrated top probability). Each candidate's cost and expected number of right answers follow
    from scores and these estimates alone; the candidates that no cheaper one matches in expected
    right answers, most expensive first, are the order ``fixed_sequence`` tests them in. Because the
    order ignores the labels, testing on the same texts is sound.
    """
    if len(outcomes.scores) == 1:
        grid = candidate_thresholds(outcomes.scores[0])
        keep = (outcomes.scores[0][None, :] >= grid[:, None]).astype(np.float64)
        expected = keep @ right_chance[0] + (1 - keep).sum(axis=1)
        reached = (1 - keep).sum(axis=1)
        dollars = outcomes.stage_dollars[0] + outcomes.stage_dollars[1] * reached / outcomes.size
        points: list[tuple[tuple[float, ...], float, float]] = [
            ((float(t),), float(d), float(e)) for t, d, e in zip(grid, dollars, expected, strict=True)
        ]
    else:
        first_grid, second_grid = (candidate_thresholds(s) for s in outcomes.scores)
        keep1 = (outcomes.scores[0][None, :] >= first_grid[:, None]).astype(np.float64)
        keep2 = (outcomes.scores[1][None, :] >= second_grid[:, None]).astype(np.float64)
        pass1, pass2 = 1.0 - keep1, 1.0 - keep2
        expected = (keep1 @ right_chance[0])[:, None] + pass1 @ (keep2 * right_chance[1]).T + pass1 @ pass2.T
        d1, d2, dt = outcomes.stage_dollars
        dollars = d1 + (d2 * pass1.sum(axis=1)[:, None] + dt * (pass1 @ pass2.T)) / outcomes.size
        points = [
            ((float(first_grid[i]), float(second_grid[j])), float(dollars[i, j]), float(expected[i, j]))
            for i in range(first_grid.size)
            for j in range(second_grid.size)
        ]
        # The two-model cascades too: the middle stage skipped (it keeps nothing, so it is never called).
        alone = (keep1 @ right_chance[0]) + pass1.sum(axis=1)
        skipped = d1 + dt * pass1.sum(axis=1) / outcomes.size
        points += [
            ((float(t), ESCALATE_ALL), float(d), float(e)) for t, d, e in zip(first_grid, skipped, alone, strict=True)
        ]
    order: list[tuple[float, ...]] = []
    best = -math.inf
    for thresholds, _, right in sorted(points, key=lambda p: (p[1], -p[2])):
        if right > best + 1e-12:
            order.append(thresholds)
            best = right
    return order[::-1]


def fixed_sequence(
    outcomes: ChainOutcomes,
    sequence: Sequence[tuple[float, ...]],
    max_quality_loss_points: float,
    *,
    confidence: float,
) -> ChainPoint:
    """Test threshold sets in a fixed order on ``outcomes``; the last one before the first failure.

    Fixed-sequence testing: when the order was fixed without these texts (on other calibration texts),
    the chosen point's bound holds at ``confidence`` however long the sequence, with no correction for
    the many candidates (Angelopoulos et al., Learn then Test, 2021). Escalating everything is tested
    first and always passes: its bound is 0.
    """
    limit = max_quality_loss_points / 100 + 1e-12
    stages = len(outcomes.scores)
    chosen = evaluate(outcomes, (ESCALATE_ALL,) * stages, confidence=confidence)
    for thresholds in sequence:
        point = evaluate(outcomes, thresholds, confidence=confidence)
        if not _meets(outcomes, point, limit, confidence):
            break
        chosen = point
    return chosen


def _two_student_grid(outcomes: ChainOutcomes, confidence: float | None) -> list[ChainPoint]:
    """Every pair of candidate thresholds, with counts as matrix products over texts."""
    first_grid, second_grid = (candidate_thresholds(s) for s in outcomes.scores)
    keep1 = (outcomes.scores[0][None, :] >= first_grid[:, None]).astype(np.float64)  # [a, n]
    keep2 = (outcomes.scores[1][None, :] >= second_grid[:, None]).astype(np.float64)  # [b, n]
    pass1, pass2 = 1.0 - keep1, 1.0 - keep2
    c1, c2, ct = (c.astype(np.float64) for c in outcomes.correct)
    d1, d2, dt = outcomes.stage_dollars
    n = outcomes.size

    def by_stage(
        first: NDArray[np.float64], second: NDArray[np.float64], teacher: NDArray[np.float64]
    ) -> NDArray[np.float64]:
        """Sum over texts of the per-stage value of the stage that answers, for every pair of thresholds."""
        return (keep1 @ first)[:, None] + pass1 @ (keep2 * second).T + (pass1 @ (pass2 * teacher).T)

    right = by_stage(c1, c2, ct)
    reached_second = pass1.sum(axis=1)[:, None]
    reached_teacher = pass1 @ pass2.T
    dollars = 1000 * (d1 + (d2 * reached_second + dt * reached_teacher) / n)
    served_first = keep1.sum(axis=1)[:, None] * np.ones((1, second_grid.size))
    bounds = np.full(right.shape, np.nan)
    if confidence is not None:
        worse = by_stage(ct * (1 - c1), ct * (1 - c2), np.zeros(n))
        better = by_stage(c1 * (1 - ct), c2 * (1 - ct), np.zeros(n))
        bounds = paired_gap_upper_bound(worse, better, n, confidence, kept=n - reached_teacher)
    return [
        ChainPoint(
            (float(first_grid[i]), float(second_grid[j])),
            (
                float(served_first[i, j] / n),
                float((n - served_first[i, j] - reached_teacher[i, j]) / n),
                float(reached_teacher[i, j] / n),
            ),
            float(right[i, j] / n),
            float(dollars[i, j]),
            float(bounds[i, j]),
        )
        for i in range(first_grid.size)
        for j in range(second_grid.size)
    ]


def chain_oracle_at(outcomes: ChainOutcomes, quality: float) -> float:
    """Dollars per 1,000 of the cheapest routing that reaches ``quality`` knowing every stage's answers.

    Every text runs the first stage; one it gets wrong is "fixed" by going on to the first later stage
    that is right, at the cost of the stages in between. The oracle fixes as few texts as the accuracy
    needs, cheapest fixes first.
    """
    return chain_oracle_route(outcomes, quality)[0]


def chain_oracle_route(outcomes: ChainOutcomes, quality: float) -> tuple[float, float]:
    """``chain_oracle_at``'s dollars per 1,000, and the share of texts its routing sends to the teacher."""
    n = outcomes.size
    cumulative = np.cumsum(outcomes.stage_dollars)
    fix_cost = np.full(n, np.inf)
    for stage in reversed(range(1, len(outcomes.correct))):
        fix_cost = np.where(outcomes.correct[stage], cumulative[stage] - cumulative[0], fix_cost)
    fix_cost = np.where(outcomes.correct[0], np.inf, fix_cost)
    fixable = np.sort(fix_cost[np.isfinite(fix_cost)])
    needed = math.ceil(round((quality - float(outcomes.correct[0].mean())) * n, 9))
    needed = min(max(needed, 0), fixable.size)
    teacher_fix = cumulative[-1] - cumulative[0]
    to_teacher = int(np.isclose(fixable[:needed], teacher_fix).sum()) if len(outcomes.correct) > 2 else needed
    return 1000 * (float(cumulative[0]) + float(fixable[:needed].sum()) / n), to_teacher / n


def share_of_chain_oracle_savings(outcomes: ChainOutcomes, point: ChainPoint) -> float:
    """(teacher-only − chain) / (teacher-only − the chain oracle at the chain's accuracy); at most 1."""
    teacher_only = 1000 * outcomes.stage_dollars[-1]
    possible = teacher_only - chain_oracle_at(outcomes, point.quality)
    return (teacher_only - point.dollars_per_1000) / possible if possible > 0 else float("nan")

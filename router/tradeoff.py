"""The cost–quality trade-off of a cascade, a threshold chosen for a user's target, and the oracle.

Inputs are per-request arrays from a dev set: the student's confidence, whether the student and the
teacher are right (with gold labels) or whether the student agrees with the teacher (without; the
teacher is then right by definition). Every point of the curve is "escalate when confidence < τ".

- ``sweep``: one point per distinct τ: escalation rate, accuracy (or agreement), cost per 1,000.
- ``choose_threshold``: the τ that meets one target (max quality loss, max escalation, max cost).
- ``oracle`` / ``oracle_at`` / ``oracle_curve``: the cheapest routing that knows every answer, at the
  best accuracy or at a given one (it escalates only texts the teacher alone gets right): no router
  beats it, so a share of its savings is at most 1.
- ``random_routing``: escalates the same share at random: what a router that knows nothing does.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike

from router.bounds import paired_gap_upper_bound
from router.cost import CostModel

Target = Literal["max_quality_loss", "max_escalation", "max_cost", "escalation_share"]


@dataclass(frozen=True)
class Point:
    threshold: float
    escalation_rate: float
    quality: float
    """Cascade accuracy (gold labels) or agreement with the teacher (without)."""
    dollars_per_1000: float
    quality_loss_bound: float = float("nan")
    """Upper confidence bound of teacher − cascade accuracy (a share), when the sweep was asked for one."""

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class Outcomes:
    confidence: np.ndarray
    student_correct: np.ndarray
    teacher_correct: np.ndarray

    @classmethod
    def from_arrays(
        cls, confidence: ArrayLike, student_correct: ArrayLike, teacher_correct: ArrayLike | None = None
    ) -> Outcomes:
        """Without ``teacher_correct`` the quality is agreement with the teacher (teacher always right)."""
        c = np.asarray(confidence, dtype=np.float64)
        s = np.asarray(student_correct, dtype=bool)
        t = np.ones_like(s) if teacher_correct is None else np.asarray(teacher_correct, dtype=bool)
        if not (c.shape == s.shape == t.shape) or c.ndim != 1 or c.size == 0:
            raise ValueError(f"need three equal, non-empty 1-d arrays, got {c.shape}, {s.shape}, {t.shape}")
        return cls(c, s, t)

    @property
    def size(self) -> int:
        return int(self.confidence.size)

    @property
    def teacher_quality(self) -> float:
        return float(self.teacher_correct.mean())

    @property
    def student_quality(self) -> float:
        return float(self.student_correct.mean())

    def at(self, threshold: float, cost: CostModel, *, confidence: float | None = None) -> Point:
        """The cascade escalating ``confidence < threshold``; with ``confidence``, its quality-loss bound too."""
        escalate = self.confidence < threshold
        quality = float(np.where(escalate, self.teacher_correct, self.student_correct).mean())
        rate = float(escalate.mean())
        bound = float("nan")
        if confidence is not None:
            kept, s, t = ~escalate, self.student_correct, self.teacher_correct
            worse, better = int((kept & t & ~s).sum()), int((kept & s & ~t).sum())
            bound = float(paired_gap_upper_bound(worse, better, self.size, confidence, kept=int(kept.sum())))
        return Point(threshold, rate, quality, cost.per_thousand(cost.cascade_dollars(rate)), bound)


def candidate_thresholds(confidence: np.ndarray) -> list[float]:
    """0 (never escalate), each distinct confidence (escalate everything strictly below it), and above 1."""
    # Exact values: a rounded one can land above its own confidence and escalate that text too.
    return [0.0, *np.unique(confidence).tolist(), math.nextafter(1.0, 2.0)]


def _prefix_sums(flags: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(flags)])


def sweep(outcomes: Outcomes, cost: CostModel, *, confidence: float | None = None) -> list[Point]:
    """``outcomes.at(t)`` for every candidate threshold, in O(n log n): sort once, then cumulative sums.

    With the confidences sorted, "escalate when confidence < t" escalates a prefix of length
    ``k = searchsorted(t)``; the cascade is right on a text when the teacher is (inside the prefix)
    or the student is (outside), so each point's quality is two prefix sums. With ``confidence``, each
    point also carries the upper bound of its gap to the teacher (``router.bounds``): the texts where
    only one of cascade and teacher is right are, again, counts outside the prefix.
    """
    order = np.argsort(outcomes.confidence, kind="stable")
    scores = outcomes.confidence[order]
    student, teacher = outcomes.student_correct[order], outcomes.teacher_correct[order]
    teacher_right, student_right = _prefix_sums(teacher), _prefix_sums(student)
    only_teacher, only_student = _prefix_sums(teacher & ~student), _prefix_sums(student & ~teacher)
    thresholds = np.asarray(candidate_thresholds(outcomes.confidence))
    escalated = np.searchsorted(scores, thresholds, side="left")
    n = outcomes.size
    quality = (teacher_right[escalated] + student_right[-1] - student_right[escalated]) / n
    rates = escalated / n
    if confidence is None:
        bounds = np.full(thresholds.shape, np.nan)
    else:
        bounds = paired_gap_upper_bound(
            only_teacher[-1] - only_teacher[escalated],
            only_student[-1] - only_student[escalated],
            n,
            confidence,
            kept=n - escalated,
        )
    return [
        Point(float(t), float(rate), float(q), cost.per_thousand(cost.cascade_dollars(float(rate))), float(b))
        for t, rate, q, b in zip(thresholds, rates, quality, bounds, strict=True)
    ]


def _oracle_point(outcomes: Outcomes, cost: CostModel, escalated: int) -> Point:
    """The oracle escalating ``escalated`` of the texts only the teacher gets right: each adds one right answer."""
    n = outcomes.size
    quality = (int(outcomes.student_correct.sum()) + escalated) / n
    return Point(float("nan"), escalated / n, quality, cost.per_thousand(cost.cascade_dollars(escalated / n)))


def _teacher_alone_right(outcomes: Outcomes) -> int:
    return int((~outcomes.student_correct & outcomes.teacher_correct).sum())


def oracle(outcomes: Outcomes, cost: CostModel) -> Point:
    """The cheapest routing to the best accuracy any router can reach, knowing every answer.

    It escalates exactly the texts the student gets wrong and the teacher gets right: escalating one
    that both get wrong costs the teacher and buys nothing, so an oracle that escalated every student
    error would be beatable (and a "share of its savings" could exceed 1).
    """
    return _oracle_point(outcomes, cost, _teacher_alone_right(outcomes))


def oracle_at(outcomes: Outcomes, cost: CostModel, quality: float) -> Point:
    """The cheapest routing that reaches ``quality`` knowing every answer: nothing beats it at that accuracy.

    It escalates just as many of the texts the teacher alone gets right as the accuracy needs (none
    when the student alone reaches it).
    """
    needed = math.ceil(round((quality - outcomes.student_quality) * outcomes.size, 9))
    return _oracle_point(outcomes, cost, min(max(needed, 0), _teacher_alone_right(outcomes)))


def oracle_curve(outcomes: Outcomes, cost: CostModel) -> list[Point]:
    """The oracle at every accuracy from the student's alone to the best reachable: the curve no router beats."""
    return [_oracle_point(outcomes, cost, k) for k in range(_teacher_alone_right(outcomes) + 1)]


def random_routing(outcomes: Outcomes, escalation_rate: float, cost: CostModel) -> Point:
    """Expected quality when a share ``escalation_rate`` is escalated at random."""
    quality = (1 - escalation_rate) * outcomes.student_quality + escalation_rate * outcomes.teacher_quality
    return Point(float("nan"), escalation_rate, quality, cost.per_thousand(cost.cascade_dollars(escalation_rate)))


def choose_threshold(
    outcomes: Outcomes, cost: CostModel, target: Target, value: float, *, confidence: float | None = None
) -> Point:
    """The threshold that meets ``target`` at ``value``:

    - ``max_quality_loss``: quality at most ``value`` points (percent) below the teacher's, lowest cost;
      with ``confidence``, the *upper bound* of the gap at that one-sided confidence must be within
      ``value`` (``router.bounds``), so the promise holds on new traffic with that probability rather
      than half the time;
    - ``max_escalation``: escalation rate at most ``value`` (0–1), best quality;
    - ``max_cost``: at most ``value`` dollars per 1,000 requests, best quality;
    - ``escalation_share``: escalate the least confident share ``value`` (0–1) of requests, as near
      as the dev set's distinct confidences allow from below (RouteLLM's quantile calibration). Unlike
      ``max_escalation`` it spends that share even where the dev set shows no quality to gain, which
      is what a small or easy dev set needs to still send the unusual text to the teacher.
    Ties go to the cheaper point. Raises ValueError when no threshold meets the target.
    """
    points = sweep(outcomes, cost, confidence=confidence)
    if target == "max_quality_loss":
        floor = outcomes.teacher_quality - value / 100
        if confidence is None:
            feasible = [p for p in points if p.quality >= floor - 1e-12]
        else:
            feasible = [p for p in points if p.quality_loss_bound <= value / 100 + 1e-12]
        best = min(feasible, key=lambda p: (p.dollars_per_1000, -p.quality), default=None)
    elif target == "max_escalation":
        feasible = [p for p in points if p.escalation_rate <= value + 1e-12]
        best = max(feasible, key=lambda p: (p.quality, -p.dollars_per_1000), default=None)
    elif target == "max_cost":
        feasible = [p for p in points if p.dollars_per_1000 <= value + 1e-12]
        best = max(feasible, key=lambda p: (p.quality, -p.dollars_per_1000), default=None)
    elif target == "escalation_share":
        feasible = [p for p in points if p.escalation_rate <= value + 1e-12]
        best = max(feasible, key=lambda p: (p.escalation_rate, p.quality), default=None)
    else:
        raise ValueError(
            f"target must be max_quality_loss, max_escalation, max_cost or escalation_share, got {target!r}"
        )
    if best is None:
        raise ValueError(f"no threshold meets {target} = {value} on this dev set")
    return best


def wilson_interval(successes: float, trials: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion: how far the dev-set estimate may be from live traffic."""
    if trials <= 0:
        raise ValueError("trials must be > 0")
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def savings_share_of_oracle(chosen: Point, outcomes: Outcomes, cost: CostModel) -> float:
    """(teacher-only cost − cascade cost) / (teacher-only cost − the oracle's cost at the cascade's accuracy).

    At most 1 by construction: no routing reaches an accuracy more cheaply than ``oracle_at`` it.
    """
    teacher_only = cost.per_thousand(cost.teacher_dollars)
    oracle_point = oracle_at(outcomes, cost, chosen.quality)
    possible = teacher_only - oracle_point.dollars_per_1000
    return (teacher_only - chosen.dollars_per_1000) / possible if possible > 0 else float("nan")


def reference_points(outcomes: Outcomes, cost: CostModel) -> dict[str, Any]:
    """Teacher only, student only and the oracle, on the curve's axes (quality, dollars per 1,000)."""
    return {
        "teacher_only": {
            "quality": outcomes.teacher_quality,
            "dollars_per_1000": cost.per_thousand(cost.teacher_dollars),
        },
        "student_only": {
            "quality": outcomes.student_quality,
            "dollars_per_1000": cost.per_thousand(cost.student_dollars),
        },
        "oracle": oracle(outcomes, cost).as_dict(),
    }


def summary(outcomes: Outcomes, cost: CostModel, chosen: Point) -> dict[str, Any]:
    """Reference points on the same axes as the curve, and the chosen point's standing against them."""
    n = outcomes.size
    return {
        "examples": n,
        "chosen": chosen.as_dict(),
        "escalation_rate_95ci": wilson_interval(chosen.escalation_rate * n, n),
        "quality_95ci": wilson_interval(chosen.quality * n, n),
        **reference_points(outcomes, cost),
        "random_at_same_escalation": random_routing(outcomes, chosen.escalation_rate, cost).as_dict(),
        "share_of_oracle_savings": savings_share_of_oracle(chosen, outcomes, cost),
    }

"""Calibrate a chain of students (cheap → better → teacher) as one policy, on data no training step saw.

Each student stage has a temperature and a rule that scores "keep this stage's answer":

- ``max_prob``: its own top probability;
- ``agreement`` (later stages only): its top probability where it gives the previous stage's answer,
  0 where the two disagree: two cheap models that agree are trusted, one that contradicts the other
  escalates (agreement-based cascading);
- ``learned``: a learned deferral rule (``router.deferral``; later stages also read whether the previous
  stage agreed and how sure it was), target "this stage is wrong".

Every combination of rules is tried; thresholds for all stages are chosen together for the overall
target (``router.chain.choose_chain``). As in ``distill.calibrate``, a learned rule's scores on the
calibration texts are cross-fitted (each scored by a rule that did not see it), so every combination
is judged on every calibration text.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from router import softmax
from router.calibration import fit_temperature
from router.chain import ChainOutcomes, ChainPoint, choose_chain
from router.cost import dollars_for
from router.deferral import (
    BASE_FEATURES,
    CHAIN_FEATURES,
    DeferralRule,
    DeferralTarget,
    cross_fitted_rule,
    deferral_features,
    keep_labels,
)
from router.signals import max_prob

FIRST_STAGE_RULES = ("max_prob", "learned")
"""In the order tried: closed-form first."""
LATER_STAGE_RULES = ("max_prob", "agreement", "learned")


@dataclass(frozen=True)
class StageOutputs:
    """One model's logits on the calibration texts, and its compute seconds per request."""

    name: str
    logits: np.ndarray
    seconds: float

    def subset(self, rows: np.ndarray) -> StageOutputs:
        return StageOutputs(self.name, self.logits[rows], self.seconds)


@dataclass(frozen=True)
class ChainData:
    """The students in chain order, the teacher, gold labels and text lengths for the same texts."""

    students: tuple[StageOutputs, ...]
    teacher: StageOutputs
    gold: np.ndarray
    text_lengths: np.ndarray

    def subset(self, rows: np.ndarray) -> ChainData:
        return ChainData(
            tuple(s.subset(rows) for s in self.students),
            self.teacher.subset(rows),
            self.gold[rows],
            self.text_lengths[rows],
        )

    def correct(self) -> list[np.ndarray]:
        return [stage.logits.argmax(axis=1) == self.gold for stage in (*self.students, self.teacher)]

    def stage_dollars(self, student_price: float, teacher_price: float) -> list[float]:
        prices = [student_price] * len(self.students) + [teacher_price]
        return [
            dollars_for(stage.seconds, price)
            for stage, price in zip((*self.students, self.teacher), prices, strict=True)
        ]


@dataclass(frozen=True)
class StageRule:
    kind: str
    """``max_prob``, ``agreement`` or ``learned``."""
    temperature: float
    learned: DeferralRule | None = None


@dataclass(frozen=True)
class ChainCalibration:
    rules: tuple[StageRule, ...]
    thresholds: tuple[float, ...]
    chosen: ChainPoint
    """The chosen point on the texts the thresholds were chosen on."""
    compared: dict[str, float | None]
    """Each combination's cost per 1,000 at the target on the comparison half (None: target not met)."""

    @property
    def name(self) -> str:
        return " → ".join(rule.kind for rule in self.rules)


def _agreement(probs: np.ndarray, previous: np.ndarray | None) -> np.ndarray:
    """Top probability where this stage gives the previous stage's answer, 0 where they disagree."""
    if previous is None:
        raise ValueError("the first stage has no previous stage to agree with")
    return np.where(probs.argmax(axis=1) == previous.argmax(axis=1), max_prob(probs), 0.0)


def stage_scores(data: ChainData, rules: tuple[StageRule, ...]) -> list[np.ndarray]:
    """Each student stage's keep-score under ``rules``."""
    scores = []
    previous: np.ndarray | None = None
    for stage, rule in zip(data.students, rules, strict=True):
        probs = softmax(stage.logits, rule.temperature)
        if rule.kind == "max_prob":
            score = max_prob(probs)
        elif rule.kind == "agreement":
            score = _agreement(probs, previous)
        elif rule.kind == "learned" and rule.learned is not None:
            score = rule.learned.score(deferral_features(probs, data.text_lengths, previous))
        else:
            raise ValueError(f"unknown stage rule {rule.kind!r} (max_prob, agreement, learned)")
        scores.append(score)
        previous = probs
    return scores


def chain_outcomes(
    data: ChainData, rules: tuple[StageRule, ...], *, student_price: float, teacher_price: float
) -> ChainOutcomes:
    return ChainOutcomes.from_arrays(
        stage_scores(data, rules), data.correct(), data.stage_dollars(student_price, teacher_price)
    )


def _fit_rules(
    data: ChainData, kinds: tuple[str, ...], temperatures: list[float], seed: int
) -> tuple[tuple[StageRule, ...], list[np.ndarray]]:
    """Stage rules of ``kinds`` fitted on ``data``, and each stage's scores there (learned: out of fold)."""
    correct = data.correct()
    rules = []
    scores = stage_scores(data, tuple(StageRule("max_prob", t) for t in temperatures))
    previous: np.ndarray | None = None
    for index, (stage, kind) in enumerate(zip(data.students, kinds, strict=True)):
        probs = softmax(stage.logits, temperatures[index])
        learned = None
        if kind == "learned":
            names = BASE_FEATURES + (CHAIN_FEATURES if previous is not None else ())
            features = deferral_features(probs, data.text_lengths, previous)
            keep = keep_labels(correct[index], correct[-1], DeferralTarget.STUDENT_WRONG)
            learned, scores[index] = cross_fitted_rule(
                features, keep, names, target=DeferralTarget.STUDENT_WRONG, seed=seed
            )
        rules.append(StageRule(kind, temperatures[index], learned))
        if kind == "agreement":
            scores[index] = _agreement(probs, previous)
        previous = probs
    return tuple(rules), scores


def calibrate_chain(
    data: ChainData,
    max_quality_loss_points: float,
    *,
    student_price: float,
    teacher_price: float,
    confidence_level: float | None,
    seed: int = 0,
) -> ChainCalibration:
    """The cheapest combination of stage rules and thresholds for the target (see the module docstring)."""
    temperatures = [fit_temperature(stage.logits, data.gold) for stage in data.students]
    dollars = data.stage_dollars(student_price, teacher_price)
    combinations = [
        (first, *later)
        for first in FIRST_STAGE_RULES
        for later in itertools.product(LATER_STAGE_RULES, repeat=len(data.students) - 1)
    ]
    compared: dict[str, float | None] = {}
    best: tuple[ChainPoint, tuple[StageRule, ...]] | None = None
    for kinds in combinations:  # closed-form combinations first: on a tie the simpler one wins
        rules, scores = _fit_rules(data, kinds, temperatures, seed)
        outcomes = ChainOutcomes.from_arrays(scores, data.correct(), dollars)
        point = choose_chain(outcomes, max_quality_loss_points, confidence=confidence_level)
        compared[" → ".join(kinds)] = point.dollars_per_1000
        if best is None or (point.dollars_per_1000, -point.quality) < (best[0].dollars_per_1000, -best[0].quality):
            best = (point, rules)
    assert best is not None
    point, rules = best
    return ChainCalibration(rules, point.thresholds, point, compared)

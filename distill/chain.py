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
from pathlib import Path

import numpy as np

from distill.calibrate import (
    MIN_RULE_TEXTS,
    CalibrationReport,
    calibrate,
    reference_histogram,
    warn_if_seen_in_training,
    write_calibration,
)
from distill.predictions import Predictions, cost_model, model_outputs, predict
from router import Signal, softmax
from router.calibration import expected_calibration_error, fit_temperature
from router.chain import (
    ChainOutcomes,
    ChainPoint,
    chain_oracle_route,
    choose_chain,
    fixed_sequence,
    label_free_order,
    share_of_chain_oracle_savings,
)
from router.cost import DEFAULT_CPU_NODE_DOLLARS_PER_HOUR, DEFAULT_GPU_NODE_DOLLARS_PER_HOUR, dollars_for
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
from router.stages import StageKind, agreement_score, stage_score
from router.tradeoff import random_routing, reference_points, wilson_interval
from serving.artifact import (
    Calibration,
    CalibrationTarget,
    CurvePoint,
    Expectation,
    LearnedRule,
    MeasuredCost,
    MiddleStage,
    QualityCost,
)
from serving.constants import DEFAULT_CALIBRATION_CONFIDENCE
from serving.model_ref import check_same_labels, resolve_model

FIRST_STAGE_RULES: tuple[StageKind, ...] = ("max_prob", "learned")
"""In the order tried: closed-form first."""
LATER_STAGE_RULES: tuple[StageKind, ...] = ("max_prob", "agreement", "learned")


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

    def stage_dollars(
        self, student_price: float, teacher_price: float, middle_price: float | None = None
    ) -> list[float]:
        """Dollars per request of each stage; ``middle_price`` (default ``student_price``) for later students."""
        later = student_price if middle_price is None else middle_price
        prices = [student_price] + [later] * (len(self.students) - 1) + [teacher_price]
        return [
            dollars_for(stage.seconds, price)
            for stage, price in zip((*self.students, self.teacher), prices, strict=True)
        ]


@dataclass(frozen=True)
class StageRule:
    kind: StageKind
    temperature: float
    learned: DeferralRule | None = None


@dataclass(frozen=True)
class ChainCalibration:
    rules: tuple[StageRule, ...]
    thresholds: tuple[float, ...]
    chosen: ChainPoint
    """The chosen point on the calibration texts."""
    compared: dict[str, float | None]
    """Each combination's cost per 1,000 at the target (every text scored out of fold for a learned rule)."""

    @property
    def name(self) -> str:
        return " → ".join(rule.kind for rule in self.rules)


def stage_scores(data: ChainData, rules: tuple[StageRule, ...]) -> list[np.ndarray]:
    """Each student stage's keep-score under ``rules``."""
    scores = []
    previous: np.ndarray | None = None
    for stage, rule in zip(data.students, rules, strict=True):
        probs = softmax(stage.logits, rule.temperature)
        scores.append(stage_score(rule.kind, probs, data.text_lengths, previous, rule.learned))
        previous = probs
    return scores


def chain_outcomes(
    data: ChainData,
    rules: tuple[StageRule, ...],
    *,
    student_price: float,
    teacher_price: float,
    middle_price: float | None = None,
) -> ChainOutcomes:
    return ChainOutcomes.from_arrays(
        stage_scores(data, rules), data.correct(), data.stage_dollars(student_price, teacher_price, middle_price)
    )


def _fit_rules(
    data: ChainData, kinds: tuple[StageKind, ...], temperatures: list[float], seed: int
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
        if kind == "agreement" and previous is not None:
            scores[index] = agreement_score(probs, previous)
        previous = probs
    return tuple(rules), scores


def calibrate_chain(
    data: ChainData,
    max_quality_loss_points: float,
    *,
    student_price: float,
    teacher_price: float,
    confidence_level: float | None,
    middle_price: float | None = None,
    seed: int = 0,
) -> ChainCalibration:
    """The cheapest combination of stage rules and thresholds for the target (see the module docstring).

    With ``confidence_level`` the thresholds are not the cheapest of thousands whose bound passes (the
    bound of a point picked among thousands on the same texts is optimistic): each combination's
    candidates are ordered without labels, from the surest to the cheapest, and tested in that order,
    stopping at the first that fails (``router.chain.label_free_order``, ``fixed_sequence``). The
    choice among the combinations themselves (at most six) is not corrected for.
    """
    temperatures = [fit_temperature(stage.logits, data.gold) for stage in data.students]
    dollars = data.stage_dollars(student_price, teacher_price, middle_price)
    right_chance = [max_prob(softmax(stage.logits, t)) for stage, t in zip(data.students, temperatures, strict=True)]
    learn = data.gold.size >= MIN_RULE_TEXTS  # as in distill.calibrate: too few texts to fit a rule on
    combinations = [
        (first, *later)
        for first in FIRST_STAGE_RULES
        for later in itertools.product(LATER_STAGE_RULES, repeat=len(data.students) - 1)
        if learn or "learned" not in (first, *later)
    ]
    compared: dict[str, float | None] = {}
    best: tuple[ChainPoint, tuple[StageRule, ...]] | None = None
    for kinds in combinations:  # closed-form combinations first: on a tie the simpler one wins
        rules, scores = _fit_rules(data, kinds, temperatures, seed)
        outcomes = ChainOutcomes.from_arrays(scores, data.correct(), dollars)
        if confidence_level is None:
            point = choose_chain(outcomes, max_quality_loss_points)
        else:
            order = label_free_order(outcomes, right_chance)
            point = fixed_sequence(outcomes, order, max_quality_loss_points, confidence=confidence_level)
        compared[" → ".join(kinds)] = point.dollars_per_1000
        if best is None or (point.dollars_per_1000, -point.quality) < (best[0].dollars_per_1000, -best[0].quality):
            best = (point, rules)
    assert best is not None
    point, rules = best
    return ChainCalibration(rules, point.thresholds, point, compared)


TWO_STAGES = "student → teacher"
"""The ``compared`` entry of the two-model cascade (no middle model), for the same target."""


def _signal_of(rule: StageRule) -> tuple[Signal, LearnedRule | None]:
    if rule.kind == "learned" and rule.learned is not None:
        return Signal.LEARNED, LearnedRule.from_rule(rule.learned)
    return Signal.MAX_PROB, None


def chain_report(
    predictions: Predictions,
    middle: StageOutputs,
    max_quality_loss_points: float,
    *,
    student_price: float,
    middle_price: float,
    teacher_price: float,
    confidence_level: float | None,
    seed: int = 0,
) -> CalibrationReport:
    """The student's calibration as the first stage of ``student → middle → teacher``, for its manifest.

    ``middle.name`` is the middle model's version (the gateway checks it). The two-model cascade is
    calibrated for the same target beside it, and its cost reported in ``middle.compared``.
    """
    gold = predictions.gold if predictions.gold is not None else predictions.teacher_logits.argmax(axis=1)
    data = ChainData(
        (StageOutputs("student", predictions.student_logits, predictions.student_seconds), middle),
        StageOutputs("teacher", predictions.teacher_logits, predictions.teacher_seconds),
        gold,
        predictions.text_lengths,
    )
    chain = calibrate_chain(
        data,
        max_quality_loss_points,
        student_price=student_price,
        middle_price=middle_price,
        teacher_price=teacher_price,
        confidence_level=confidence_level,
        seed=seed,
    )
    try:
        alone = calibrate(
            predictions,
            "max_quality_loss",
            max_quality_loss_points,
            student_price=student_price,
            teacher_price=teacher_price,
            confidence_level=confidence_level,
            seed=seed,
        ).expected.chosen.dollars_per_1000
    except ValueError:
        alone = None
    outcomes = chain_outcomes(
        data, chain.rules, student_price=student_price, teacher_price=teacher_price, middle_price=middle_price
    )
    point = chain.chosen
    n = outcomes.size
    two_stage = predictions.outcomes(outcomes.scores[0])
    cost = cost_model(predictions, student_price=student_price, teacher_price=teacher_price)
    references = reference_points(two_stage, cost)
    oracle_dollars, oracle_to_teacher = chain_oracle_route(outcomes, point.quality)
    chosen = CurvePoint(
        threshold=point.thresholds[0],
        escalation_rate=point.escalation_rate,
        quality=point.quality,
        dollars_per_1000=point.dollars_per_1000,
        quality_loss_bound=point.quality_loss_bound,
    )
    expected = Expectation(
        examples=n,
        chosen=chosen,
        escalation_rate_95ci=wilson_interval(point.escalation_rate * n, n),
        quality_95ci=wilson_interval(point.quality * n, n),
        teacher_only=QualityCost.model_validate(references["teacher_only"]),
        student_only=QualityCost.model_validate(references["student_only"]),
        oracle=CurvePoint(
            threshold=None, escalation_rate=oracle_to_teacher, quality=point.quality, dollars_per_1000=oracle_dollars
        ),
        random_at_same_escalation=CurvePoint.model_validate(
            random_routing(two_stage, point.escalation_rate, cost).as_dict()
        ),
        share_of_oracle_savings=share_of_chain_oracle_savings(outcomes, point),
    )
    first, second = chain.rules
    signal, learned = _signal_of(first)
    middle_learned = LearnedRule.from_rule(second.learned) if second.learned is not None else None
    served = point.served_share
    calibration = Calibration(
        signal=signal,
        threshold=point.thresholds[0],
        target=CalibrationTarget(kind="max_quality_loss", value=max_quality_loss_points),
        quality_measure="accuracy" if predictions.gold is not None else "agreement_with_teacher",
        cost_model=MeasuredCost(
            student_seconds_per_request=predictions.student_seconds,
            teacher_seconds_per_request=predictions.teacher_seconds,
            student_dollars_per_hour=student_price,
            teacher_dollars_per_hour=teacher_price,
        ),
        expected=expected,
        reference_confidence=reference_histogram(outcomes.scores[0]),
        confidence=confidence_level,
        rule=learned,
        middle=MiddleStage(
            model=middle.name,
            kind=second.kind,
            threshold=point.thresholds[1],
            temperature=second.temperature,
            rule=middle_learned,
            seconds_per_request=middle.seconds,
            dollars_per_hour=middle_price,
            expected_served_share=(served[0], served[1], served[2]),
            compared={**chain.compared, TWO_STAGES: alone},
        ),
    )
    ece_before = expected_calibration_error(softmax(predictions.student_logits), gold)
    ece_after = expected_calibration_error(softmax(predictions.student_logits, first.temperature), gold)
    return CalibrationReport(
        temperature=first.temperature, ece_before=ece_before, ece_after=ece_after, calibration=calibration
    )


def calibrate_chain_artifacts(
    teacher: str,
    student: str,
    middle: str,
    data_path: str | Path,
    max_quality_loss_points: float,
    *,
    write: bool = True,
    threads: int = 1,
    student_price: float = DEFAULT_CPU_NODE_DOLLARS_PER_HOUR,
    middle_price: float = DEFAULT_CPU_NODE_DOLLARS_PER_HOUR,
    teacher_price: float = DEFAULT_GPU_NODE_DOLLARS_PER_HOUR,
    confidence_level: float | None = DEFAULT_CALIBRATION_CONFIDENCE,
) -> CalibrationReport:
    """``cascade calibrate --middle``: calibrate ``student → middle → teacher`` and store it in the student."""
    teacher_ref, student_ref, middle_ref = resolve_model(teacher), resolve_model(student), resolve_model(middle)
    check_same_labels(student_ref, middle_ref)
    warnings = warn_if_seen_in_training(data_path, teacher_ref, student_ref, middle_ref)
    predictions = predict(teacher_ref, student_ref, data_path, threads=threads)
    logits, seconds = model_outputs(middle_ref, predictions.texts, threads=threads)
    report = chain_report(
        predictions,
        StageOutputs(middle_ref.version, logits, seconds),
        max_quality_loss_points,
        student_price=student_price,
        middle_price=middle_price,
        teacher_price=teacher_price,
        confidence_level=confidence_level,
    ).model_copy(update={"warnings": warnings})
    if write:
        write_calibration(Path(student_ref.location), report)
    return report

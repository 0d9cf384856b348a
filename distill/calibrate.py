"""Calibrate a student for the cascade: temperature, the rule that scores it, and the threshold.

``calibrate`` works on predictions over a labelled file that *no training step saw* (neither training
nor early stopping: ``calibrate_artifacts`` warns when it is handed a model's own early-stopping or
training file). It fits the student's temperature (NLL), then picks the rule and the threshold that meet
the user's target at the lowest cost:

- the threshold is chosen on the *upper confidence bound* of the quality loss (``router.bounds``), not
  its point estimate, so the promise holds on new traffic with the stated confidence;
- the rule is a closed-form signal (max-prob, margin, entropy) or a learned deferral rule
  (``router.deferral``). A learned rule is fitted on one part of the calibration texts and its
  threshold chosen on the other; the closed-form signals are compared on that same other part, and the
  learned rule is kept only where it is cheaper there (``--rule auto``, the default). When a closed-form
  signal wins, its threshold is re-chosen on all calibration texts.

The choice (temperature, rule, threshold, what to expect live, and the reference confidence
distribution drift checks compare against) goes into the student's manifest, where the gateway reads it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, field_validator

from distill.data import read_jsonl
from distill.predictions import Predictions, batched_logits, cost_model, predict
from router import CascadePolicy, Signal, confidence, softmax
from router.calibration import expected_calibration_error, fit_temperature
from router.cost import DEFAULT_CPU_NODE_DOLLARS_PER_HOUR, DEFAULT_GPU_NODE_DOLLARS_PER_HOUR, CostModel
from router.deferral import (
    BASE_FEATURES,
    DeferralRule,
    DeferralTarget,
    cross_fitted_rule,
    deferral_features,
    keep_labels,
)
from router.signals import CLOSED_FORM_SIGNALS
from router.tradeoff import Outcomes, Point, Target, choose_threshold, summary
from serving.artifact import (
    Calibration,
    CalibrationTarget,
    ConfidenceHistogram,
    Expectation,
    LearnedRule,
    MeasuredCost,
    RuleChoice,
    read_manifest,
    write_manifest,
)
from serving.backends import load_backend
from serving.constants import DEFAULT_CALIBRATION_CONFIDENCE
from serving.model_ref import ModelRef, resolve_model

REFERENCE_BINS = 20
MIN_RULE_TEXTS = 200
"""Below this many calibration texts a learned rule is not tried (each half would be under 100)."""
FOLD_SEED = 0
"""Seeds the cross-fitting folds."""

RuleMode = Literal["auto", "signals", "learned"]


class CalibrationReport(BaseModel):
    """What ``cascade calibrate`` found: the fitted temperature, its effect, and the rule for the manifest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float
    ece_before: float | None
    """Expected calibration error before and after the temperature (None without gold labels)."""
    ece_after: float | None
    calibration: Calibration
    warnings: list[str] = []
    """What the user should know about the data it was given (a model's own early-stopping file, …)."""
    point_estimate_escalation: float | None = None
    """With a bound on the quality loss: what the kept rule would escalate on the gap measured here alone,
    so the user sees what the bound costs (it narrows with the square root of the calibration texts)."""

    @field_validator("ece_before", "ece_after", mode="before")
    @classmethod
    def _no_nan(cls, value: Any) -> Any:
        return None if isinstance(value, float) and value != value else value

    @property
    def signal(self) -> Signal:
        return self.calibration.signal

    @property
    def threshold(self) -> float:
        return self.calibration.threshold

    @property
    def expected(self) -> Expectation:
        return self.calibration.expected


@dataclass(frozen=True)
class _Scored:
    """A rule and its score for every calibration text (a learned rule's: out of fold)."""

    name: str
    signal: Signal
    rule: DeferralRule | None
    scores: np.ndarray


@dataclass(frozen=True)
class _Candidate:
    name: str
    """``max_prob``, ``margin``, ``entropy`` or ``learned (<target>)``."""
    point: Point
    outcomes: Outcomes
    signal: Signal
    rule: DeferralRule | None = None


def reference_histogram(scores: np.ndarray) -> ConfidenceHistogram:
    """Share of dev requests per confidence bin: the distribution live drift (PSI) is measured against."""
    edges = np.linspace(0.0, 1.0, REFERENCE_BINS + 1)
    counts, _ = np.histogram(np.clip(scores, 0.0, 1.0), bins=edges)
    return ConfidenceHistogram(edges=edges.round(4).tolist(), shares=(counts / max(1, counts.sum())).round(6).tolist())


def rule_scores(predictions: Predictions, policy: CascadePolicy) -> np.ndarray:
    """The policy's confidence for each text, as the gateway computes it."""
    return policy.scores(predictions.student_probabilities(policy.temperature), predictions.text_lengths)


def _temperature(predictions: Predictions) -> float:
    gold = predictions.gold if predictions.gold is not None else predictions.teacher_logits.argmax(axis=1)
    return fit_temperature(predictions.student_logits, gold)


def _best(candidates: list[_Candidate], target: Target) -> _Candidate:
    if target == "max_quality_loss":
        return min(candidates, key=lambda c: (c.point.dollars_per_1000, -c.point.quality))
    return max(candidates, key=lambda c: (c.point.quality, -c.point.dollars_per_1000))


def _candidates(
    predictions: Predictions,
    scored: Sequence[_Scored],
    cost: CostModel,
    target: Target,
    value: float,
    confidence_level: float | None,
) -> tuple[list[_Candidate], dict[str, float | None]]:
    """Each rule's cheapest (or best) point for the target on ``predictions``; None where none meets it."""
    met: list[_Candidate] = []
    dollars: dict[str, float | None] = {}
    for candidate in scored:
        outcomes = predictions.outcomes(candidate.scores)
        try:
            point = choose_threshold(outcomes, cost, target, value, confidence=confidence_level)
        except ValueError:
            dollars[candidate.name] = None
            continue
        dollars[candidate.name] = point.dollars_per_1000
        met.append(_Candidate(candidate.name, point, outcomes, candidate.signal, candidate.rule))
    return met, dollars


def calibrate(
    predictions: Predictions,
    target: Target,
    value: float,
    *,
    student_price: float = DEFAULT_CPU_NODE_DOLLARS_PER_HOUR,
    teacher_price: float = DEFAULT_GPU_NODE_DOLLARS_PER_HOUR,
    signals: tuple[Signal, ...] = CLOSED_FORM_SIGNALS,
    rule: RuleMode = "auto",
    confidence_level: float | None = DEFAULT_CALIBRATION_CONFIDENCE,
    seed: int = FOLD_SEED,
) -> CalibrationReport:
    """Temperature, rule and threshold for the target (see the module's docstring); the full report.

    ``confidence_level``: one-sided confidence of the quality-loss bound (None: the point estimate).
    Raises ValueError when no rule meets the target, or a learned rule is demanded of too few texts.
    """
    cost = cost_model(predictions, student_price=student_price, teacher_price=teacher_price)
    enough = len(predictions.texts) >= MIN_RULE_TEXTS
    if rule == "learned" and not enough:
        raise ValueError(
            f"a learned rule needs at least {MIN_RULE_TEXTS} calibration texts, got {len(predictions.texts)}"
        )
    temperature = _temperature(predictions)
    probabilities = predictions.student_probabilities(temperature)
    scored: list[_Scored] = []
    if rule != "learned":  # closed-form first: on a tie the simpler rule wins
        scored += [_Scored(signal.value, signal, None, confidence(probabilities, signal)) for signal in signals]
    if rule != "signals" and enough:
        features = deferral_features(probabilities, predictions.text_lengths)
        for kind in DeferralTarget:
            keep = keep_labels(*predictions.correctness(), kind)
            learned, out_of_fold = cross_fitted_rule(features, keep, BASE_FEATURES, target=kind, seed=seed)
            scored.append(_Scored(f"learned ({kind.value})", Signal.LEARNED, learned, out_of_fold))
    met, dollars = _candidates(predictions, scored, cost, target, value, confidence_level)
    if not met:
        raise ValueError(f"no rule and threshold meet {target} = {value} on this calibration set")
    winner = _best(met, target)
    choice = None
    if any(s.rule is not None for s in scored):
        choice = RuleChoice(compared_on=len(predictions.texts), dollars_per_1000=dollars, kept=winner.name)
    report = _report(predictions, temperature, winner, cost, target, value, confidence_level, choice)
    if target == "max_quality_loss" and confidence_level is not None:
        unbounded = choose_threshold(winner.outcomes, cost, target, value)  # met wherever the bound is
        report = report.model_copy(update={"point_estimate_escalation": unbounded.escalation_rate})
    return report


def _report(
    predictions: Predictions,
    temperature: float,
    winner: _Candidate,
    cost: CostModel,
    target: Target,
    value: float,
    confidence_level: float | None,
    choice: RuleChoice | None,
) -> CalibrationReport:
    """The manifest's record for the winning rule; expectations from the texts its threshold was chosen on."""
    if predictions.gold is not None:
        ece_before = expected_calibration_error(softmax(predictions.student_logits), predictions.gold)
        ece_after = expected_calibration_error(softmax(predictions.student_logits, temperature), predictions.gold)
    else:
        ece_before = ece_after = float("nan")
    calibration = Calibration(
        signal=winner.signal,
        threshold=winner.point.threshold,
        target=CalibrationTarget(kind=target, value=value),
        quality_measure="accuracy" if predictions.gold is not None else "agreement_with_teacher",
        cost_model=MeasuredCost(
            student_seconds_per_request=cost.student_seconds_per_request,
            teacher_seconds_per_request=cost.teacher_seconds_per_request,
            student_dollars_per_hour=cost.student_dollars_per_hour,
            teacher_dollars_per_hour=cost.teacher_dollars_per_hour,
        ),
        expected=Expectation.model_validate(summary(winner.outcomes, cost, winner.point)),
        reference_confidence=reference_histogram(winner.outcomes.confidence),
        confidence=confidence_level if target == "max_quality_loss" else None,
        rule=LearnedRule.from_rule(winner.rule) if winner.rule is not None else None,
        rule_choice=choice,
    )
    return CalibrationReport(
        temperature=temperature, ece_before=ece_before, ece_after=ece_after, calibration=calibration
    )


def policy_from(calibration: Calibration, temperature: float) -> CascadePolicy:
    """The policy a manifest's calibration describes (what the gateway serves with, config aside)."""
    rule = calibration.rule.to_rule() if calibration.rule is not None else None
    return CascadePolicy(calibration.threshold, calibration.signal, temperature, rule)


def fit_teacher_temperature(teacher_folder: Path, dev_path: str | Path, *, max_length: int = 64) -> float:
    """Fit the teacher's temperature on labelled dev data (minimum NLL) and store it in its manifest.

    The gateway reports the teacher's confidence after this temperature, as it does the student's.
    """
    teacher = resolve_model(str(teacher_folder))
    data = read_jsonl(dev_path, known_labels=teacher.labels)
    logits = batched_logits(load_backend(teacher, max_length=max_length), data.texts)
    temperature = fit_temperature(logits, data.label_ids(list(teacher.labels)))
    write_manifest(teacher_folder, read_manifest(teacher_folder).model_copy(update={"temperature": temperature}))
    return temperature


def write_calibration(student_folder: Path, report: CalibrationReport) -> None:
    """Store temperature and the cascade rule in the student's manifest (checksums rewritten)."""
    manifest = read_manifest(student_folder)
    updated = manifest.model_copy(update={"temperature": report.temperature, "calibration": report.calibration})
    write_manifest(student_folder, updated)


def seen_in_training(data_path: str | Path, *models: ModelRef) -> list[str]:
    """Warnings for each model whose manifest says ``data_path`` trained (as its training or transfer
    texts) or early-stopped it.

    Thresholds chosen on such data promise too much: on it the student looks closer to the teacher
    than it is on new traffic.
    """
    target = Path(data_path).resolve()
    warnings = []
    for model in models:
        training = model.manifest.training if model.manifest is not None else {}
        for step, word in (("dev", "early-stopped"), ("train", "trained"), ("transfer", "trained")):
            source = (training.get(step) or {}).get("source")
            if source and Path(source).resolve() == target:
                warnings.append(
                    f"{data_path} {word} {model.version}: calibrating on it overstates what the cascade "
                    "keeps on new traffic; use a file no training step saw (cascade split keeps one aside)"
                )
    return warnings


def warn_if_seen_in_training(data_path: str | Path, *models: ModelRef) -> list[str]:
    """``seen_in_training``'s warnings, printed on stderr as well (what the calibrate commands do)."""
    warnings = seen_in_training(data_path, *models)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return warnings


def calibrate_artifacts(
    teacher: str,
    student: str,
    dev_path: str | Path,
    target: Target,
    value: float,
    *,
    write: bool = True,
    threads: int = 1,
    student_price: float = DEFAULT_CPU_NODE_DOLLARS_PER_HOUR,
    teacher_price: float = DEFAULT_GPU_NODE_DOLLARS_PER_HOUR,
    rule: RuleMode = "auto",
    confidence_level: float | None = DEFAULT_CALIBRATION_CONFIDENCE,
) -> CalibrationReport:
    teacher_ref, student_ref = resolve_model(teacher), resolve_model(student)
    warnings = warn_if_seen_in_training(dev_path, teacher_ref, student_ref)
    predictions = predict(teacher_ref, student_ref, dev_path, threads=threads)
    report = calibrate(
        predictions,
        target,
        value,
        student_price=student_price,
        teacher_price=teacher_price,
        rule=rule,
        confidence_level=confidence_level,
    ).model_copy(update={"warnings": warnings})
    if write:
        write_calibration(Path(student_ref.location), report)
    return report

"""A learned deferral rule: a small logistic model that scores "keep the student's answer".

Max-probability routing ranks texts by one number. A post-hoc rule learned on a small calibration
set can weigh several that the student already computes (Jitkrittum et al., NeurIPS 2023; Gupta et
al., ICLR 2024): its top probabilities, margin, entropy, the text's length and, in a chain, whether
the previous stage gave the same answer. The rule is a logistic regression over standardised features,
fitted by Newton's method with an L2 penalty (numpy only, a few milliseconds), and its output is used
like any closed-form signal: a score in [0, 1], higher meaning keep, escalate when below the threshold.

What it learns to predict (``DeferralTarget``):

- ``teacher_better``: 1 − P(the teacher is right where the student is wrong), the texts escalation
  fixes; without gold labels, 1 − P(the teacher answers differently);
- ``student_wrong``: 1 − P(the student is wrong), whatever the teacher would do.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from numpy.typing import ArrayLike, NDArray

from router.signals import FloatArray, margin, max_prob, normalised_negative_entropy

BASE_FEATURES = ("max_prob", "margin", "negative_entropy", "second_prob", "log_length")
CHAIN_FEATURES = ("agrees_with_previous", "previous_max_prob")


class DeferralTarget(StrEnum):
    TEACHER_BETTER = "teacher_better"
    STUDENT_WRONG = "student_wrong"


def deferral_features(
    probabilities: ArrayLike,
    text_lengths: ArrayLike,
    previous_probabilities: ArrayLike | None = None,
) -> FloatArray:
    """The rule's inputs, one row per text: ``BASE_FEATURES`` (+ ``CHAIN_FEATURES`` after a previous stage)."""
    probs = np.asarray(probabilities, dtype=np.float64)
    lengths = np.asarray(text_lengths, dtype=np.float64)
    if probs.ndim != 2 or lengths.shape != (probs.shape[0],):
        raise ValueError(f"need probabilities [n, k] and n text lengths, got {probs.shape} and {lengths.shape}")
    second = np.sort(probs, axis=1)[:, -2]
    columns = [max_prob(probs), margin(probs), normalised_negative_entropy(probs), second, np.log1p(lengths)]
    if previous_probabilities is not None:
        previous = np.asarray(previous_probabilities, dtype=np.float64)
        if previous.shape != probs.shape:
            raise ValueError(f"previous stage's probabilities {previous.shape} differ from {probs.shape}")
        agrees = (previous.argmax(axis=1) == probs.argmax(axis=1)).astype(np.float64)
        columns += [agrees, max_prob(previous)]
    return np.column_stack(columns)


def keep_labels(
    student_correct: ArrayLike, teacher_correct: ArrayLike, target: DeferralTarget | str
) -> NDArray[np.float64]:
    """1 where the student's answer should stand, for ``target``."""
    student, teacher = np.asarray(student_correct, dtype=bool), np.asarray(teacher_correct, dtype=bool)
    if DeferralTarget(target) is DeferralTarget.TEACHER_BETTER:
        return np.asarray(~(teacher & ~student), dtype=np.float64)
    return np.asarray(student, dtype=np.float64)


def _sigmoid(x: FloatArray) -> FloatArray:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * x)), dtype=np.float64)


@dataclass(frozen=True)
class DeferralRule:
    """``score = sigmoid(bias + weights · (features − mean) / scale)``: P(keep the student's answer)."""

    feature_names: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float
    target: DeferralTarget = DeferralTarget.TEACHER_BETTER

    def __post_init__(self) -> None:
        sizes = {len(self.feature_names), len(self.mean), len(self.scale), len(self.weights)}
        if len(sizes) != 1:
            raise ValueError("feature_names, mean, scale and weights must have the same length")
        unknown = set(self.feature_names) - set(BASE_FEATURES + CHAIN_FEATURES)
        if unknown:
            raise ValueError(f"unknown features {sorted(unknown)}; allowed: {BASE_FEATURES + CHAIN_FEATURES}")
        if any(s <= 0 for s in self.scale):
            raise ValueError("every scale must be > 0")

    @property
    def needs_previous_stage(self) -> bool:
        return any(name in CHAIN_FEATURES for name in self.feature_names)

    def score(self, features: ArrayLike) -> FloatArray:
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.feature_names):
            raise ValueError(f"need features [n, {len(self.feature_names)}], got {x.shape}")
        z = (x - np.asarray(self.mean)) / np.asarray(self.scale)
        return _sigmoid(z @ np.asarray(self.weights) + self.bias)

    def as_dict(self) -> dict[str, object]:
        return {
            "feature_names": list(self.feature_names),
            "mean": list(self.mean),
            "scale": list(self.scale),
            "weights": list(self.weights),
            "bias": self.bias,
            "target": self.target.value,
        }


def fit_deferral_rule(
    features: ArrayLike,
    keep: ArrayLike,
    feature_names: tuple[str, ...],
    *,
    target: DeferralTarget | str = DeferralTarget.TEACHER_BETTER,
    l2: float = 1.0,
    iterations: int = 50,
    standardise: tuple[FloatArray, FloatArray] | None = None,
) -> DeferralRule:
    """Penalised logistic regression by Newton's method with a backtracking line search; the bias is not penalised.

    The features are nearly collinear (max probability, margin and entropy move together), where plain
    Newton steps overshoot and diverge: each step is halved until the penalised loss decreases.

    ``standardise``: the (mean, scale) to centre features with, default these features' own. With one
    class only (every text kept, say) the rule is a constant: there is nothing to learn.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(keep, dtype=np.float64)
    if x.ndim != 2 or y.shape != (x.shape[0],) or x.shape[0] == 0 or x.shape[1] != len(feature_names):
        raise ValueError(f"need features [n, {len(feature_names)}] and n labels, got {x.shape} and {y.shape}")
    mean, scale = standardise if standardise is not None else _standardisation(x)
    z = np.column_stack([np.ones(x.shape[0]), (x - mean) / scale])
    rate = float(np.clip(y.mean(), 1e-3, 1 - 1e-3))
    beta = np.zeros(z.shape[1])
    beta[0] = np.log(rate / (1 - rate))
    if 0 < y.mean() < 1:
        penalty = np.full(z.shape[1], l2)
        penalty[0] = 0.0

        def loss(b: FloatArray) -> float:
            margins = z @ b
            # log(1 + e^m) − y·m, computed stably
            return float(np.sum(np.logaddexp(0.0, margins) - y * margins) + 0.5 * np.sum(penalty * b * b))

        current = loss(beta)
        for _ in range(iterations):
            p = _sigmoid(z @ beta)
            gradient = z.T @ (p - y) + penalty * beta
            hessian = (z * (p * (1 - p))[:, None]).T @ z + np.diag(penalty) + 1e-9 * np.eye(z.shape[1])
            step = np.linalg.solve(hessian, gradient)
            size = 1.0
            while size > 1e-10 and loss(beta - size * step) > current - 1e-4 * size * float(gradient @ step):
                size /= 2
            if size <= 1e-10:
                break
            beta = beta - size * step
            current = loss(beta)
            if float(np.abs(size * step).max()) < 1e-8:
                break
    return DeferralRule(
        feature_names=tuple(feature_names),
        mean=tuple(float(v) for v in mean),
        scale=tuple(float(v) for v in scale),
        weights=tuple(float(v) for v in beta[1:]),
        bias=float(beta[0]),
        target=DeferralTarget(target),
    )


def _standardisation(x: FloatArray) -> tuple[FloatArray, FloatArray]:
    scale = x.std(axis=0)
    return x.mean(axis=0), np.where(scale > 1e-9, scale, 1.0)


def cross_fitted_rule(
    features: ArrayLike,
    keep: ArrayLike,
    feature_names: tuple[str, ...],
    *,
    target: DeferralTarget | str = DeferralTarget.TEACHER_BETTER,
    folds: int = 5,
    seed: int = 0,
) -> tuple[DeferralRule, FloatArray]:
    """The rule and, for every text, its score by a rule fitted *without* that text.

    Each of ``folds`` parts is scored by a rule fitted on the others, so a threshold can be chosen on
    every calibration text without judging a rule on the texts that fitted it (cross-fitting). The
    rule returned is the mean of the fold rules: same standardisation, mean weights and bias, so its
    logit is the mean of theirs.
    """
    x, y = np.asarray(features, dtype=np.float64), np.asarray(keep, dtype=np.float64)
    if x.shape[0] < 2 * folds:
        raise ValueError(f"need at least {2 * folds} texts for {folds} folds, got {x.shape[0]}")
    standardise = _standardisation(x)
    fold_of = np.random.default_rng(seed).permutation(x.shape[0]) % folds
    scores = np.empty(x.shape[0])
    rules = []
    for fold in range(folds):
        inside = fold_of != fold
        rule = fit_deferral_rule(x[inside], y[inside], feature_names, target=target, standardise=standardise)
        scores[~inside] = rule.score(x[~inside])
        rules.append(rule)
    mean_rule = DeferralRule(
        feature_names=tuple(feature_names),
        mean=rules[0].mean,
        scale=rules[0].scale,
        weights=tuple(float(w) for w in np.mean([r.weights for r in rules], axis=0)),
        bias=float(np.mean([r.bias for r in rules])),
        target=DeferralTarget(target),
    )
    return mean_rule, scores

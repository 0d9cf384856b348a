"""The cascade decision: one confidence score per request and one threshold.

Like RouteLLM's routers, the policy is a scoring function plus a comparison. A request escalates to
the teacher when the student's (temperature-scaled) confidence is strictly below ``threshold``;
``threshold = 0`` therefore never escalates and any ``threshold > 1`` always does. The score is a
closed-form signal of the probabilities, or (``Signal.LEARNED``) a learned deferral rule's P(keep).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from router.deferral import DeferralRule, deferral_features
from router.signals import FloatArray, Signal, confidence, softmax


@dataclass(frozen=True)
class StudentVerdict:
    """What the policy concluded about a batch of student outputs."""

    probabilities: FloatArray
    """Calibrated class probabilities, shape ``[n, k]``."""
    confidence: FloatArray
    """The chosen signal per row, in [0, 1]."""
    escalate: NDArray[np.bool_]
    """True where the teacher must answer."""

    @property
    def escalation_rate(self) -> float:
        return float(self.escalate.mean()) if self.escalate.size else 0.0


@dataclass(frozen=True)
class CascadePolicy:
    """Escalate when ``signal(softmax(logits / temperature)) < threshold``."""

    threshold: float
    signal: Signal = Signal.MAX_PROB
    temperature: float = 1.0
    rule: DeferralRule | None = None
    """The learned rule, required with (and only with) ``Signal.LEARNED``."""

    def __post_init__(self) -> None:
        if not self.threshold >= 0:
            raise ValueError(f"threshold must be >= 0, got {self.threshold}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        object.__setattr__(self, "signal", Signal(self.signal))
        if (self.signal is Signal.LEARNED) != (self.rule is not None):
            raise ValueError("signal 'learned' needs a rule, and a rule needs signal 'learned'")
        if self.rule is not None and self.rule.needs_previous_stage:
            raise ValueError("this rule reads a previous stage's answer: it belongs to a chain, not to two models")

    def scores(self, probabilities: FloatArray, text_lengths: ArrayLike | None = None) -> FloatArray:
        """The policy's confidence per row (the learned rule also reads each text's length in characters)."""
        if self.rule is None:
            return confidence(probabilities, self.signal)
        if text_lengths is None:
            raise ValueError("the learned rule needs the texts' lengths")
        return self.rule.score(deferral_features(probabilities, text_lengths))

    def judge(self, student_logits: ArrayLike, text_lengths: ArrayLike | None = None) -> StudentVerdict:
        probabilities = softmax(student_logits, self.temperature)
        scores = self.scores(probabilities, text_lengths)
        return StudentVerdict(probabilities, scores, scores < self.threshold)

    def for_teacher(self, temperature: float) -> CascadePolicy:
        """How the teacher's own confidence is reported: the same closed-form signal, never escalating.

        A learned rule scores the student; the teacher's answers report max probability.
        """
        signal = Signal.MAX_PROB if self.signal is Signal.LEARNED else self.signal
        return CascadePolicy(0.0, signal, temperature)

"""The cascade decision: one confidence score per request and one threshold.

Like RouteLLM's routers, the policy is a scoring function plus a comparison. A request escalates to
the teacher when the student's (temperature-scaled) confidence is strictly below ``threshold``;
``threshold = 0`` therefore never escalates and any ``threshold > 1`` always does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

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

    def __post_init__(self) -> None:
        if not self.threshold >= 0:
            raise ValueError(f"threshold must be >= 0, got {self.threshold}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        object.__setattr__(self, "signal", Signal(self.signal))

    def judge(self, student_logits: ArrayLike) -> StudentVerdict:
        probabilities = softmax(student_logits, self.temperature)
        scores = confidence(probabilities, self.signal)
        return StudentVerdict(probabilities, scores, scores < self.threshold)

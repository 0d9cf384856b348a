"""A later stage of a chain (student → middle → teacher): when the middle model's answer stands.

The first stage is scored like a two-model cascade (``router.policy.CascadePolicy``). A later stage
sees only the texts the stage before it escalated, and scores its own answer with one of
``STAGE_KINDS``:

- ``max_prob``: its own top probability;
- ``agreement``: its top probability where it gives the previous stage's answer, 0 where the two
  disagree: two cheap models that agree are trusted, one that contradicts the other escalates
  (agreement-based cascading);
- ``learned``: a learned deferral rule (``router.deferral``) that also reads whether the previous
  stage agreed and how sure it was.

The same functions score calibration texts offline (``distill.chain``) and live texts in the gateway,
so the threshold calibration chose is compared with the very score the gateway computes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
from numpy.typing import ArrayLike

from router.deferral import DeferralRule, deferral_features
from router.policy import StudentVerdict
from router.signals import FloatArray, max_prob, softmax

StageKind = Literal["max_prob", "agreement", "learned"]
STAGE_KINDS: tuple[StageKind, ...] = get_args(StageKind)


def agreement_score(probabilities: FloatArray, previous: FloatArray) -> FloatArray:
    """Top probability where this stage gives the previous stage's answer, 0 where they disagree."""
    agrees = probabilities.argmax(axis=1) == previous.argmax(axis=1)
    return np.asarray(np.where(agrees, max_prob(probabilities), 0.0), dtype=np.float64)


def stage_score(
    kind: str,
    probabilities: FloatArray,
    text_lengths: ArrayLike,
    previous: FloatArray | None,
    rule: DeferralRule | None = None,
) -> FloatArray:
    """A stage's keep-score per text under ``kind`` (``previous``: the stage before's probabilities, or None)."""
    if kind == "max_prob":
        return max_prob(probabilities)
    if kind == "agreement":
        if previous is None:
            raise ValueError("the first stage has no previous stage to agree with")
        return agreement_score(probabilities, previous)
    if kind == "learned":
        if rule is None:
            raise ValueError("stage kind 'learned' needs its rule")
        return rule.score(
            deferral_features(probabilities, text_lengths, previous if rule.needs_previous_stage else None)
        )
    raise ValueError(f"unknown stage kind {kind!r}; allowed: {', '.join(STAGE_KINDS)}")


@dataclass(frozen=True)
class StagePolicy:
    """A later stage keeps its answer when ``stage_score(kind, …) >= threshold``, else escalates onward."""

    kind: StageKind
    threshold: float
    temperature: float = 1.0
    rule: DeferralRule | None = None

    def __post_init__(self) -> None:
        if self.kind not in STAGE_KINDS:
            raise ValueError(f"kind must be one of {', '.join(STAGE_KINDS)}, got {self.kind!r}")
        if not self.threshold >= 0:
            raise ValueError(f"threshold must be >= 0, got {self.threshold}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if (self.kind == "learned") != (self.rule is not None):
            raise ValueError("kind 'learned' needs a rule, and a rule needs kind 'learned'")

    def judge(self, logits: ArrayLike, previous_probabilities: ArrayLike, text_lengths: ArrayLike) -> StudentVerdict:
        """The verdict on the texts this stage saw (``previous_probabilities``: the first stage's, same rows)."""
        probabilities = softmax(logits, self.temperature)
        previous = np.asarray(previous_probabilities, dtype=np.float64)
        scores = stage_score(self.kind, probabilities, text_lengths, previous, self.rule)
        return StudentVerdict(probabilities, scores, scores < self.threshold)


__all__ = ["STAGE_KINDS", "StageKind", "StagePolicy", "agreement_score", "stage_score"]

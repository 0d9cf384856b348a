"""One request through the cascade: student first, the teacher only for what the policy escalates.

Independent of Ray: the two models are plain async callables (texts in, logits out), so the same
code runs behind Ray Serve handles in the gateway and behind local backends in tests and tools.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import numpy as np

from router import CascadePolicy
from serving.schemas import ClassifyResult
from serving.vocabulary import Role, Route

LogitsCall = Callable[[list[str]], Awaitable[np.ndarray]]


@dataclass(frozen=True)
class CascadeOutcome:
    results: list[ClassifyResult]
    student_logits: np.ndarray | None
    teacher_logits: np.ndarray | None
    """Teacher logits for the rows the teacher answered, in the order of ``teacher_rows``."""
    teacher_rows: list[int]
    student_confidence: np.ndarray | None = None
    """The student's calibrated confidence for every text it judged (None when it did not run)."""
    student_probabilities: np.ndarray | None = None
    """The student's calibrated probabilities, ``[n, k]`` (None when it did not run)."""


def _result(
    labels: Sequence[str], probabilities: np.ndarray, served_by: Role, escalated: bool, confidence: float
) -> ClassifyResult:
    top = int(np.argmax(probabilities))
    return ClassifyResult(
        label=labels[top],
        confidence=float(confidence),
        served_by=served_by,
        escalated=escalated,
        scores={label: float(p) for label, p in zip(labels, probabilities, strict=True)},
    )


async def run_cascade(
    texts: list[str],
    route: Route,
    *,
    policy: CascadePolicy,
    labels: Sequence[str],
    teacher_temperature: float,
    student: LogitsCall,
    teacher: LogitsCall,
) -> CascadeOutcome:
    """Classify ``texts`` in order. ``confidence`` is the policy's signal for the model that answered."""
    if route == "teacher":
        teacher_logits = await teacher(texts)
        verdict = policy.for_teacher(teacher_temperature).judge(teacher_logits)
        results = [
            _result(labels, verdict.probabilities[i], "teacher", False, verdict.confidence[i])
            for i in range(len(texts))
        ]
        return CascadeOutcome(results, None, teacher_logits, list(range(len(texts))))

    student_logits = await student(texts)
    verdict = policy.judge(student_logits, [len(text) for text in texts])
    results = [
        _result(labels, verdict.probabilities[i], "student", False, verdict.confidence[i]) for i in range(len(texts))
    ]
    if route == "student" or not verdict.escalate.any():
        return CascadeOutcome(results, student_logits, None, [], verdict.confidence, verdict.probabilities)

    rows = [int(i) for i in np.flatnonzero(verdict.escalate)]
    teacher_logits = await teacher([texts[i] for i in rows])
    teacher_verdict = policy.for_teacher(teacher_temperature).judge(teacher_logits)
    for position, row in enumerate(rows):
        results[row] = _result(
            labels,
            teacher_verdict.probabilities[position],
            "teacher",
            True,
            teacher_verdict.confidence[position],
        )
    return CascadeOutcome(results, student_logits, teacher_logits, rows, verdict.confidence, verdict.probabilities)


__all__ = ["CascadeOutcome", "LogitsCall", "run_cascade"]

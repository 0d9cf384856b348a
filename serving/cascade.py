"""One request through the cascade: student first, the teacher only for what the policy escalates.

Independent of Ray: the models are plain async callables (texts in, logits out), so the same
code runs behind Ray Serve handles in the gateway and behind local backends in tests and tools.

When a model cannot answer (a ``ServiceError``: timeout, down, full, breaker open; or the API key's
teacher budget is spent) and ``degrade`` is on, a ``route: auto`` request is still answered: the
student's answer stands for the texts it escalated, and the teacher answers every text when the
student failed. In a chain of three, a failed middle model's texts go on to the teacher, and the
middle model's answer stands for the texts it escalated when the teacher fails. Those results say
``degraded`` and why. A forced route never switches model.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import numpy as np

from router import CascadePolicy
from router.stages import StagePolicy
from serving.errors import CascadeError, RateLimited, ServiceError
from serving.schemas import ClassifyResult
from serving.vocabulary import DegradedReason, Failure, Role, Route

LogitsCall = Callable[[list[str]], Awaitable[np.ndarray]]

_MODEL_FAILURES = (ServiceError, RateLimited)
"""What a model call may raise that another model can make up for."""


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
    degraded_reason: DegradedReason | None = None
    degraded_rows: tuple[int, ...] = ()
    middle_rows: tuple[int, ...] = ()
    """Rows the middle model judged (a chain of three), in the order of ``middle_confidence``."""
    middle_confidence: np.ndarray | None = None


def failure_of(error: CascadeError) -> Failure:
    """The vocabulary's name for why a model did not answer."""
    if isinstance(error, ServiceError):
        return error.failure
    return "budget" if isinstance(error, RateLimited) else "error"


def degraded_reason(role: Role, error: CascadeError) -> DegradedReason:
    reason: DegradedReason = f"{role}_{failure_of(error)}"  # type: ignore[assignment]
    return reason


def _result(
    labels: Sequence[str],
    probabilities: np.ndarray,
    served_by: Role,
    escalated: bool,
    confidence: float,
    degraded: DegradedReason | None = None,
) -> ClassifyResult:
    top = int(np.argmax(probabilities))
    # Built from values of the right types already: constructed without validating, which for a
    # label set of 77 cost more than the student (the shape is checked by a test, and documented by
    # ClassifyResponse).
    return ClassifyResult.model_construct(
        label=labels[top],
        confidence=float(confidence),
        served_by=served_by,
        escalated=escalated,
        scores=dict(zip(labels, probabilities.tolist(), strict=True)),
        degraded=degraded is not None,
        degraded_reason=degraded,
    )


async def _teacher_only(
    texts: list[str],
    *,
    policy: CascadePolicy,
    labels: Sequence[str],
    teacher_temperature: float,
    teacher: LogitsCall,
    degraded: DegradedReason | None = None,
) -> CascadeOutcome:
    teacher_logits = await teacher(texts)
    verdict = policy.for_teacher(teacher_temperature).judge(teacher_logits)
    results = [
        _result(labels, verdict.probabilities[i], "teacher", False, verdict.confidence[i], degraded)
        for i in range(len(texts))
    ]
    rows = list(range(len(texts)))
    return CascadeOutcome(
        results, None, teacher_logits, rows, degraded_reason=degraded, degraded_rows=tuple(rows) if degraded else ()
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
    degrade: bool = True,
    middle: LogitsCall | None = None,
    middle_policy: StagePolicy | None = None,
) -> CascadeOutcome:
    """Classify ``texts`` in order. ``confidence`` is the policy's signal for the model that answered.

    With ``middle`` (and its ``middle_policy``), the texts the student escalates go to the middle model
    first, and only those it escalates in turn reach the teacher.
    """
    common = {"policy": policy, "labels": labels, "teacher_temperature": teacher_temperature, "teacher": teacher}
    if route == "teacher":
        return await _teacher_only(texts, **common)  # type: ignore[arg-type]

    try:
        student_logits = await student(texts)
    except _MODEL_FAILURES as error:
        if route == "student" or not degrade:
            raise
        return await _teacher_only(texts, **common, degraded=degraded_reason("student", error))  # type: ignore[arg-type]
    verdict = policy.judge(student_logits, [len(text) for text in texts])
    results = [
        _result(labels, verdict.probabilities[i], "student", False, verdict.confidence[i]) for i in range(len(texts))
    ]
    middle_rows: tuple[int, ...] = ()
    middle_confidence: np.ndarray | None = None

    def outcome(
        teacher_logits: np.ndarray | None = None,
        teacher_rows: Sequence[int] = (),
        reason: DegradedReason | None = None,
        degraded_rows: Sequence[int] = (),
    ) -> CascadeOutcome:
        return CascadeOutcome(
            results,
            student_logits,
            teacher_logits,
            list(teacher_rows),
            verdict.confidence,
            verdict.probabilities,
            reason,
            tuple(degraded_rows),
            middle_rows,
            middle_confidence,
        )

    if route == "student" or not verdict.escalate.any():
        return outcome()

    rows = [int(i) for i in np.flatnonzero(verdict.escalate)]
    fallback = list(results)  # what stands for a text the teacher cannot answer: the last answer before it
    reason: DegradedReason | None = None
    if middle is not None and middle_policy is not None and middle_policy.threshold <= 1:  # > 1 keeps nothing
        try:
            middle_logits = await middle([texts[i] for i in rows])
        except _MODEL_FAILURES as error:
            if not degrade:
                raise
            reason = degraded_reason("middle", error)  # its texts go on to the teacher
        else:
            judged = middle_policy.judge(middle_logits, verdict.probabilities[rows], [len(texts[i]) for i in rows])
            for position, row in enumerate(rows):
                fallback[row] = results[row] = _result(
                    labels, judged.probabilities[position], "middle", True, judged.confidence[position]
                )
            middle_rows, middle_confidence = tuple(rows), judged.confidence
            rows = [row for position, row in enumerate(rows) if judged.escalate[position]]
            if not rows:
                return outcome()

    try:
        teacher_logits = await teacher([texts[i] for i in rows])
    except _MODEL_FAILURES as error:
        if not degrade:
            raise
        reason = degraded_reason("teacher", error)
        for row in rows:
            results[row] = fallback[row].model_copy(update={"degraded": True, "degraded_reason": reason})
        return outcome(reason=reason, degraded_rows=rows)
    teacher_verdict = policy.for_teacher(teacher_temperature).judge(teacher_logits)
    for position, row in enumerate(rows):
        results[row] = _result(
            labels,
            teacher_verdict.probabilities[position],
            "teacher",
            True,
            teacher_verdict.confidence[position],
            reason,
        )
    return outcome(teacher_logits, rows, reason, rows if reason is not None else ())


__all__ = ["CascadeOutcome", "LogitsCall", "degraded_reason", "failure_of", "run_cascade"]

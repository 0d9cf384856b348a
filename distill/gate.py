"""The promotion gate of ``cascade redistill``: pure decisions, no I/O, unit-tested on their own.

- ``triggers``: whether the new traffic asks for training (force, new labels, drift, schedule);
- ``decide_promotion``: whether a measured candidate replaces the current student.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict


class StudentMeasurement(BaseModel):
    """One student on the held-back slice of logged texts (never trained on)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    agreement: float
    """Top-1 agreement with the teacher's logged answers."""
    cpu_ms_per_text: float
    parameters: int
    calibration: dict[str, float | str] | None = None
    """The candidate's calibrated rule (temperature, signal, threshold); None for the current student."""
    calibration_error: str | None = None
    """Why the candidate could not be calibrated, when it could not."""
    expected_escalation_rate: float | None = None


@dataclass(frozen=True)
class GateDecision:
    outcome: Literal["promoted", "rejected"]
    why: str

    @property
    def promote(self) -> bool:
        return self.outcome == "promoted"


def decide_promotion(
    candidate: StudentMeasurement, current: StudentMeasurement, *, cost_tolerance: float
) -> GateDecision:
    """Promote only a calibrated candidate at least as good on agreement and not more costly.

    A candidate of the same shape (it starts from the current student's weights) costs the same by
    construction, and timing two identical graphs only measures noise; a larger one must measure no
    slower per text than ``cost_tolerance`` allows.
    """
    if candidate.calibration is None:
        return GateDecision("rejected", f"the candidate could not be calibrated ({candidate.calibration_error})")
    if candidate.agreement < current.agreement:
        return GateDecision(
            "rejected", f"agreement with the teacher {candidate.agreement:.4f} < current {current.agreement:.4f}"
        )
    limit = current.cpu_ms_per_text * (1 + cost_tolerance)
    if candidate.parameters > current.parameters and candidate.cpu_ms_per_text > limit:
        return GateDecision("rejected", f"costlier: {candidate.cpu_ms_per_text:.3f} ms/text > {limit:.3f}")
    return GateDecision(
        "promoted",
        f"agreement {candidate.agreement:.4f} >= {current.agreement:.4f} at "
        f"{candidate.cpu_ms_per_text:.3f} ms/text (current {current.cpu_ms_per_text:.3f})",
    )


def triggers(
    *,
    force: bool,
    new_labels: int,
    min_new_labels: int,
    shadow_disagreement: float | None,
    shadow_compared: int,
    min_shadow: int,
    max_disagreement: float,
    every_s: float | None,
    seconds_since_training: float | None,
) -> Sequence[str]:
    """Why this run should train (empty: it should not). ``seconds_since_training`` None: never trained."""
    reasons = []
    if force:
        reasons.append("forced (--force)")
    if new_labels >= min_new_labels:
        reasons.append(f"{new_labels} new teacher labels >= {min_new_labels}")
    if shadow_disagreement is not None and shadow_compared >= min_shadow and shadow_disagreement > max_disagreement:
        reasons.append(f"shadow disagreement {shadow_disagreement:.3f} > {max_disagreement}")
    if every_s is not None and (seconds_since_training is None or seconds_since_training >= every_s):
        reasons.append(f"schedule: every {every_s:.0f} s")
    return reasons


__all__ = ["GateDecision", "StudentMeasurement", "decide_promotion", "triggers"]

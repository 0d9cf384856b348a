"""Calibrate a student for the cascade, and draw the cost–quality curve against the oracle.

``calibrate``: run teacher and student on a dev file, fit the student's temperature (NLL), measure
each role's compute seconds per request on this machine, then for every signal pick the threshold
that meets the user's target and keep the best signal. The choice (temperature, signal, threshold,
what to expect live, and the reference confidence distribution that drift checks compare against)
is written into the student's manifest, where the gateway reads it.

``curve``: the same predictions, swept over every threshold, written as JSON and a PNG.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, field_validator

from distill.data import read_jsonl
from distill.evaluate import time_backend
from router import Signal, confidence, softmax
from router.calibration import expected_calibration_error, fit_temperature
from router.cost import DEFAULT_CPU_NODE_DOLLARS_PER_HOUR, DEFAULT_GPU_NODE_DOLLARS_PER_HOUR, CostModel
from router.tradeoff import (
    Outcomes,
    Point,
    Target,
    choose_threshold,
    oracle_curve,
    reference_points,
    summary,
    sweep,
)
from serving.artifact import (
    Calibration,
    CalibrationTarget,
    ConfidenceHistogram,
    Expectation,
    MeasuredCost,
    read_manifest,
    write_manifest,
)
from serving.backends import Backend, load_backend
from serving.errors import ArtifactError
from serving.model_ref import ModelRef, resolve_model
from serving.plotting import pyplot

REFERENCE_BINS = 20


class CalibrationReport(BaseModel):
    """What ``cascade calibrate`` found: the fitted temperature, its effect, and the rule for the manifest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float
    ece_before: float | None
    """Expected calibration error before and after the temperature (None without gold labels)."""
    ece_after: float | None
    calibration: Calibration

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
class Predictions:
    texts: list[str]
    gold: np.ndarray | None
    teacher_logits: np.ndarray
    student_logits: np.ndarray
    teacher_seconds: float
    student_seconds: float
    """Measured compute seconds per request at batch 32 on this machine."""

    def subset(self, rows: np.ndarray) -> Predictions:
        return Predictions(
            [self.texts[i] for i in rows],
            None if self.gold is None else self.gold[rows],
            self.teacher_logits[rows],
            self.student_logits[rows],
            self.teacher_seconds,
            self.student_seconds,
        )


def batched_logits(backend: Backend, texts: list[str], batch: int = 64) -> np.ndarray:
    """A backend's logits for many texts, ``batch`` at a time."""
    return np.concatenate([backend.logits(texts[i : i + batch]) for i in range(0, len(texts), batch)])


def predict(
    teacher: ModelRef, student: ModelRef, data_path: str | Path, *, threads: int = 1, max_length: int = 64
) -> Predictions:
    if teacher.labels != student.labels:
        raise ArtifactError("teacher and student label lists differ")
    data = read_jsonl(data_path, require_labels=False, known_labels=teacher.labels)
    has_gold = all(label is not None for label in data.labels)
    gold = np.asarray(data.label_ids(list(teacher.labels))) if has_gold else None
    backends = {
        role: load_backend(ref, threads=threads, max_length=max_length)
        for role, ref in (("teacher", teacher), ("student", student))
    }
    timing_texts = data.texts[:256]
    seconds = {
        role: time_backend(backend, timing_texts, 32).cpu_ms_per_example / 1000 for role, backend in backends.items()
    }
    return Predictions(
        data.texts,
        gold,
        batched_logits(backends["teacher"], data.texts),
        batched_logits(backends["student"], data.texts),
        seconds["teacher"],
        seconds["student"],
    )


def outcomes_for(predictions: Predictions, temperature: float, signal: Signal) -> Outcomes:
    student_probs = softmax(predictions.student_logits, temperature)
    student_labels = student_probs.argmax(axis=1)
    teacher_labels = predictions.teacher_logits.argmax(axis=1)
    scores = confidence(student_probs, signal)
    if predictions.gold is None:  # without gold labels, quality is agreement with the teacher
        return Outcomes.from_arrays(scores, student_labels == teacher_labels)
    return Outcomes.from_arrays(scores, student_labels == predictions.gold, teacher_labels == predictions.gold)


def cost_model(predictions: Predictions, *, student_price: float, teacher_price: float) -> CostModel:
    return CostModel(predictions.student_seconds, predictions.teacher_seconds, student_price, teacher_price)


def reference_histogram(scores: np.ndarray) -> ConfidenceHistogram:
    """Share of dev requests per confidence bin: the distribution live drift (PSI) is measured against."""
    edges = np.linspace(0.0, 1.0, REFERENCE_BINS + 1)
    counts, _ = np.histogram(np.clip(scores, 0.0, 1.0), bins=edges)
    return ConfidenceHistogram(edges=edges.round(4).tolist(), shares=(counts / max(1, counts.sum())).round(6).tolist())


def calibrate(
    predictions: Predictions,
    target: Target,
    value: float,
    *,
    student_price: float = DEFAULT_CPU_NODE_DOLLARS_PER_HOUR,
    teacher_price: float = DEFAULT_GPU_NODE_DOLLARS_PER_HOUR,
    signals: tuple[Signal, ...] = tuple(Signal),
) -> CalibrationReport:
    """Fit the temperature, then the best (signal, threshold) for the target; return the full report."""
    cost = cost_model(predictions, student_price=student_price, teacher_price=teacher_price)
    if predictions.gold is not None:
        temperature = fit_temperature(predictions.student_logits, predictions.gold)
        ece_before = expected_calibration_error(softmax(predictions.student_logits), predictions.gold)
        ece_after = expected_calibration_error(softmax(predictions.student_logits, temperature), predictions.gold)
    else:  # soft labels from the teacher stand in for gold when there is none
        temperature = fit_temperature(predictions.student_logits, predictions.teacher_logits.argmax(axis=1))
        ece_before = ece_after = float("nan")
    candidates: list[tuple[Point, Signal, Outcomes]] = []
    for signal in signals:
        outcomes = outcomes_for(predictions, temperature, signal)
        try:
            candidates.append((choose_threshold(outcomes, cost, target, value), signal, outcomes))
        except ValueError:
            continue
    if not candidates:
        raise ValueError(f"no signal and threshold meet {target} = {value} on this dev set")
    if target == "max_quality_loss":
        chosen, signal, outcomes = min(candidates, key=lambda c: (c[0].dollars_per_1000, -c[0].quality))
    else:
        chosen, signal, outcomes = max(candidates, key=lambda c: (c[0].quality, -c[0].dollars_per_1000))
    calibration = Calibration(
        signal=signal,
        threshold=chosen.threshold,
        target=CalibrationTarget(kind=target, value=value),
        quality_measure="accuracy" if predictions.gold is not None else "agreement_with_teacher",
        cost_model=MeasuredCost(
            student_seconds_per_request=cost.student_seconds_per_request,
            teacher_seconds_per_request=cost.teacher_seconds_per_request,
            student_dollars_per_hour=cost.student_dollars_per_hour,
            teacher_dollars_per_hour=cost.teacher_dollars_per_hour,
        ),
        expected=Expectation.model_validate(summary(outcomes, cost, chosen)),
        reference_confidence=reference_histogram(outcomes.confidence),
    )
    return CalibrationReport(
        temperature=temperature, ece_before=ece_before, ece_after=ece_after, calibration=calibration
    )


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


def curve(
    predictions: Predictions,
    *,
    temperature: float,
    signal: Signal,
    cost: CostModel,
    chosen_threshold: float | None = None,
) -> dict[str, Any]:
    outcomes = outcomes_for(predictions, temperature, signal)
    points = sweep(outcomes, cost)
    chosen = outcomes.at(chosen_threshold, cost) if chosen_threshold is not None else None
    result: dict[str, Any] = {
        "quality_measure": "accuracy" if predictions.gold is not None else "agreement_with_teacher",
        "signal": signal.value,
        "temperature": temperature,
        "points": [p.as_dict() for p in points],
        "oracle_points": [p.as_dict() for p in oracle_curve(outcomes, cost)],
        **reference_points(outcomes, cost),
    }
    if chosen is not None:
        result["chosen"] = summary(outcomes, cost, chosen)
    if predictions.gold is not None:  # agreement curve alongside accuracy
        agreement = outcomes_for(dataclasses.replace(predictions, gold=None), temperature, signal)
        result["agreement_points"] = [p.as_dict() for p in sweep(agreement, cost)]
    return result


def plot_curve(result: dict[str, Any], path: Path, title: str) -> None:
    plt = pyplot()

    figure, axis = plt.subplots(figsize=(7, 4.5), dpi=120)
    curves = [
        ("points", f"cascade ({result['quality_measure']})", {}),
        ("agreement_points", "cascade (agreement with teacher)", {"linestyle": "--"}),
        # the cheapest routing at each accuracy, knowing every answer
        ("oracle_points", "oracle (cheapest at each accuracy)", {"linestyle": ":", "color": "grey"}),
    ]
    for key, label, style in curves:
        if key in result:
            points = result[key]
            axis.plot([p["dollars_per_1000"] for p in points], [p["quality"] for p in points], label=label, **style)
    references = [("teacher only", result["teacher_only"], "s"), ("student only", result["student_only"], "o")]
    references.append(("oracle", result["oracle"], "*"))
    if "chosen" in result:
        chosen = result["chosen"]
        references.append(("random, same escalation", chosen["random_at_same_escalation"], "x"))
        references.append(("chosen τ", chosen["chosen"], "D"))
    for name, point, marker in references:
        axis.scatter([point["dollars_per_1000"]], [point["quality"]], marker=marker, s=60, label=name, zorder=3)
    axis.set_xlabel("dollars per 1,000 requests")
    axis.set_ylabel(result["quality_measure"])
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)


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
) -> CalibrationReport:
    teacher_ref, student_ref = resolve_model(teacher), resolve_model(student)
    predictions = predict(teacher_ref, student_ref, dev_path, threads=threads)
    report = calibrate(predictions, target, value, student_price=student_price, teacher_price=teacher_price)
    if write:
        write_calibration(Path(student_ref.location), report)
    return report

"""Offline evaluation of a teacher and a student on a labelled JSONL file, in one run on one machine.

Quality: accuracy and macro-F1 of each, top-1 agreement student–teacher. Cost: parameters, size on
disk per format, and CPU time per example for every backend the artifact has (torch, ONNX fp32,
ONNX int8) at batch 1 and batch 32, measured with the same thread count for every model so that the
ratios compare like with like.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from distill.data import read_jsonl
from serving.artifact import ONNX_INT8_NAME, ONNX_NAME
from serving.backends import Backend, OnnxBackend, TorchBackend
from serving.model_ref import ModelRef, resolve_model


def macro_f1(predicted: Sequence[int], gold: Sequence[int], num_labels: int) -> float:
    """Unweighted mean of per-label F1 over the labels that occur in gold or predictions."""
    p, g = np.asarray(predicted), np.asarray(gold)
    scores = []
    for label in range(num_labels):
        tp = int(np.sum((p == label) & (g == label)))
        fp = int(np.sum((p == label) & (g != label)))
        fn = int(np.sum((p != label) & (g == label)))
        if tp + fp + fn == 0:
            continue
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0


def _backends(ref: ModelRef, threads: int, max_length: int) -> dict[str, Backend]:
    found: dict[str, Backend] = {"torch": TorchBackend(ref, device="cpu", threads=threads, max_length=max_length)}
    folder = Path(ref.location)
    if (folder / ONNX_NAME).exists():
        found["onnx_fp32"] = OnnxBackend(ref, device="cpu", threads=threads, max_length=max_length)
    if (folder / ONNX_INT8_NAME).exists():
        found["onnx_int8"] = OnnxBackend(ref, device="cpu", threads=threads, max_length=max_length, quantized=True)
    return found


class _Report(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Timing(_Report):
    cpu_ms_per_example: float
    wall_ms_per_example: float


class ModelEvaluation(_Report):
    """One model on the evaluation data: quality, size, and CPU time per example for each backend × batch."""

    version: str
    accuracy: float
    macro_f1: float
    parameters: int
    size_on_disk: dict[str, int]
    timing: dict[str, Timing]
    """``<backend>_batch<size>``, e.g. ``onnx_fp32_batch32``."""
    threads: int


class DataSummary(_Report):
    path: str
    rows: int


class EvaluationReport(_Report):
    """``cascade evaluate``: teacher and student on the same data, in the same run on the same machine."""

    data: DataSummary
    teacher: ModelEvaluation
    student: ModelEvaluation
    agreement: float
    """Top-1 agreement of student and teacher."""
    accuracy_kept: float | None
    cpu_time_ratio: dict[str, float]
    """Student CPU time / teacher CPU time, per backend × batch both have."""


def time_backend(backend: Backend, texts: Sequence[str], batch_size: int, repeats: int = 3) -> Timing:
    """Median over ``repeats`` passes of CPU (process) and wall time per example, after a warm-up."""
    batches = [list(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
    backend.logits(batches[0])
    cpu, wall = [], []
    for _ in range(repeats):
        cpu_start, wall_start = time.process_time(), time.perf_counter()
        for batch in batches:
            backend.logits(batch)
        cpu.append((time.process_time() - cpu_start) * 1000 / len(texts))
        wall.append((time.perf_counter() - wall_start) * 1000 / len(texts))
    return Timing(cpu_ms_per_example=statistics.median(cpu), wall_ms_per_example=statistics.median(wall))


def _size_on_disk(folder: Path) -> dict[str, int]:
    def total(names: Sequence[str]) -> int:
        return sum((folder / n).stat().st_size for n in names if (folder / n).exists())

    return {
        "hf_bytes": total(["model.safetensors", "pytorch_model.bin"]),
        "onnx_fp32_bytes": total([ONNX_NAME]),
        "onnx_int8_bytes": total([ONNX_INT8_NAME]),
    }


def _parameters(backend: Backend) -> int:
    model = getattr(backend, "_model", None)
    return int(sum(p.numel() for p in model.parameters())) if model is not None else 0


def evaluate_model(
    ref: ModelRef,
    texts: Sequence[str],
    gold: Sequence[int],
    *,
    threads: int = 1,
    max_length: int = 64,
    batch_sizes: Sequence[int] = (1, 32),
    timing_examples: int = 256,
) -> tuple[ModelEvaluation, np.ndarray]:
    backends = _backends(ref, threads, max_length)
    quality_backend = backends.get("onnx_fp32", backends["torch"])
    logits = np.concatenate([quality_backend.logits(list(texts[i : i + 64])) for i in range(0, len(texts), 64)])
    predicted = logits.argmax(axis=1)
    timing_texts = list(texts[:timing_examples])
    timings = {
        f"{name}_batch{size}": time_backend(backend, timing_texts, size)
        for name, backend in backends.items()
        for size in batch_sizes
    }
    report = ModelEvaluation(
        version=ref.version,
        accuracy=float(np.mean(predicted == np.asarray(gold))),
        macro_f1=macro_f1(predicted.tolist(), gold, len(ref.labels)),
        parameters=_parameters(backends["torch"]),
        size_on_disk=_size_on_disk(Path(ref.location)),
        timing=timings,
        threads=threads,
    )
    return report, logits


def evaluate_pair(
    teacher: str,
    student: str,
    data_path: str | Path,
    *,
    threads: int = 1,
    max_length: int = 64,
    limit: int | None = None,
    timing_examples: int = 256,
) -> EvaluationReport:
    teacher_ref, student_ref = resolve_model(teacher), resolve_model(student)
    labels = list(teacher_ref.labels)
    data = read_jsonl(data_path, known_labels=labels, limit=limit)
    gold = data.label_ids(labels)
    options = {"threads": threads, "max_length": max_length, "timing_examples": timing_examples}
    teacher_report, teacher_logits = evaluate_model(teacher_ref, data.texts, gold, **options)  # type: ignore[arg-type]
    student_report, student_logits = evaluate_model(student_ref, data.texts, gold, **options)  # type: ignore[arg-type]
    agreement = float(np.mean(teacher_logits.argmax(axis=1) == student_logits.argmax(axis=1)))
    return EvaluationReport(
        data=DataSummary(path=str(data_path), rows=len(data)),
        teacher=teacher_report,
        student=student_report,
        agreement=agreement,
        accuracy_kept=student_report.accuracy / teacher_report.accuracy if teacher_report.accuracy else None,
        cpu_time_ratio={
            key: timing.cpu_ms_per_example / teacher_report.timing[key].cpu_ms_per_example
            for key, timing in student_report.timing.items()
            if key in teacher_report.timing
        },
    )


def format_table(report: EvaluationReport) -> str:
    teacher, student = report.teacher, report.student
    rows = [("", "teacher", "student")]
    rows.append(("accuracy", f"{teacher.accuracy:.4f}", f"{student.accuracy:.4f}"))
    rows.append(("macro-F1", f"{teacher.macro_f1:.4f}", f"{student.macro_f1:.4f}"))
    rows.append(("parameters", f"{teacher.parameters:,}", f"{student.parameters:,}"))
    for key, timing in teacher.timing.items():
        other = student.timing.get(key)
        rows.append(
            (
                f"cpu ms/example {key}",
                f"{timing.cpu_ms_per_example:.3f}",
                f"{other.cpu_ms_per_example:.3f}" if other else "-",
            )
        )
    rows.append(("agreement student-teacher", f"{report.agreement:.4f}", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows)

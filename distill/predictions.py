"""Teacher and student outputs on a labelled file: what calibration, curves and benchmarks work from.

``predict`` runs both models once over the file and measures each one's compute seconds per request
on this machine; everything downstream (temperatures, rules, thresholds, curves) is numpy on these
arrays, so choosing among many rules costs no further model calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distill.data import read_jsonl
from distill.evaluate import time_backend
from router import softmax
from router.cost import CostModel
from router.tradeoff import Outcomes
from serving.backends import Backend, load_backend
from serving.errors import ArtifactError
from serving.model_ref import ModelRef


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

    @property
    def text_lengths(self) -> np.ndarray:
        return np.asarray([len(text) for text in self.texts], dtype=np.float64)

    def correctness(self) -> tuple[np.ndarray, np.ndarray]:
        """(student right, teacher right) per text; without gold labels, (agrees with the teacher, True)."""
        student_labels = self.student_logits.argmax(axis=1)
        teacher_labels = self.teacher_logits.argmax(axis=1)
        if self.gold is None:
            return student_labels == teacher_labels, np.ones(len(self.texts), dtype=bool)
        return student_labels == self.gold, teacher_labels == self.gold

    def outcomes(self, scores: np.ndarray) -> Outcomes:
        """The cascade's inputs for one scoring of the student (quality = accuracy, or agreement without gold)."""
        student_right, teacher_right = self.correctness()
        return Outcomes.from_arrays(scores, student_right, teacher_right)

    def student_probabilities(self, temperature: float) -> np.ndarray:
        return softmax(self.student_logits, temperature)


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
    teacher_logits, teacher_seconds = model_outputs(teacher, data.texts, threads=threads, max_length=max_length)
    student_logits, student_seconds = model_outputs(student, data.texts, threads=threads, max_length=max_length)
    return Predictions(data.texts, gold, teacher_logits, student_logits, teacher_seconds, student_seconds)


def model_outputs(
    model: ModelRef, texts: list[str], *, threads: int = 1, max_length: int = 64
) -> tuple[np.ndarray, float]:
    """One model's logits on ``texts``, and its compute seconds per request at batch 32 on this machine."""
    backend = load_backend(model, threads=threads, max_length=max_length)
    seconds = time_backend(backend, texts[:256], 32).cpu_ms_per_example / 1000
    return batched_logits(backend, texts), seconds


def cost_model(predictions: Predictions, *, student_price: float, teacher_price: float) -> CostModel:
    return CostModel(predictions.student_seconds, predictions.teacher_seconds, student_price, teacher_price)

"""Tiny but real model artifacts for tests: random-weight BERTs of width 32, built in seconds.

They use the packaged MiniLM tokenizer (offline), the project's own manifest writer and its own ONNX
exporter, so every test that serves them exercises the real artifact path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from serving.vocabulary import Role

if TYPE_CHECKING:
    from distill.predictions import Predictions
    from serving.artifact import Calibration
    from serving.registry import Registry

LABELS = ["balance", "card", "greeting"]
TEXTS = [
    "what is my balance",
    "I lost my card",
    "hello there",
    "how much money do I have",
    "my card was stolen yesterday",
    "good morning",
]


@dataclass(frozen=True)
class TinyPair:
    teacher: Path
    student: Path
    data: Path


def build_tiny_model(folder: Path, *, layers: int, seed: int, role: Role, onnx: bool) -> Path:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from distill.build import default_base_model
    from distill.export import export_onnx
    from serving.artifact import Manifest, write_manifest

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        id2label=dict(enumerate(LABELS)),
        label2id={label: i for i, label in enumerate(LABELS)},
    )
    model = BertForSequenceClassification(config).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(default_base_model()).save_pretrained(folder)
    metrics = export_onnx(folder, TEXTS) if onnx else {}
    write_manifest(
        folder,
        Manifest(name=f"tiny-{role}", version="1", role=role, labels=LABELS, formats=["hf"], metrics=metrics),
    )
    return folder


def write_dataset(path: Path) -> Path:
    rows = [{"text": t, "label": LABELS[i % 3]} for i, t in enumerate(TEXTS)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def build_tiny_pair(root: Path) -> TinyPair:
    return TinyPair(
        teacher=build_tiny_model(root / "teacher", layers=2, seed=1, role="teacher", onnx=False),
        student=build_tiny_model(root / "student", layers=1, seed=2, role="student", onnx=True),
        data=write_dataset(root / "data.jsonl"),
    )


KEYWORDS = {
    "balance": ["balance", "money", "much", "savings", "account", "funds"],
    "card": ["card", "lost", "stolen", "pin", "blocked", "atm"],
    "greeting": ["hello", "morning", "hi", "thanks", "hey", "evening"],
}
FILLERS = ["my", "the", "please", "today", "what", "is", "can", "you", "now", "help", "me", "need"]


def keyword_texts(label: str, n: int, seed: int) -> list[str]:
    """``n`` texts of ``label``: two of its keywords and two fillers, shuffled (a learnable intent)."""
    import random

    rng = random.Random(f"{label}-{seed}")
    texts = []
    for _ in range(n):
        words = rng.sample(KEYWORDS[label], 2) + rng.sample(FILLERS, 2)
        rng.shuffle(words)
        texts.append(" ".join(words))
    return texts


def write_rows(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def ambiguous_texts(first: str, second: str, n: int, seed: int) -> list[str]:
    """``n`` texts with one keyword of each of two intents: where a student and its teacher can differ."""
    import random

    rng = random.Random(f"{first}-{second}-{seed}")
    texts = []
    for _ in range(n):
        words = [rng.choice(KEYWORDS[first]), rng.choice(KEYWORDS[second]), *rng.sample(FILLERS, 2)]
        rng.shuffle(words)
        texts.append(" ".join(words))
    return texts


def synthetic_predictions(n: int, seed: int, *, length_matters: bool) -> Predictions:
    """4 classes; the teacher is right 95% of the time. With ``length_matters`` the student fails on long
    texts however sure it looks; otherwise its errors follow its own confidence."""
    rng = np.random.default_rng(seed)
    gold = rng.integers(0, 4, n)
    lengths = rng.integers(5, 200, n)
    sureness = rng.random(n)
    if length_matters:
        student_right = rng.random(n) < np.where(lengths > 160, 0.15, 0.99)
    else:
        student_right = rng.random(n) < 0.55 + 0.45 * sureness
    student_label = np.where(student_right, gold, (gold + rng.integers(1, 4, n)) % 4)
    student_logits = rng.normal(0, 0.3, (n, 4))
    student_logits[np.arange(n), student_label] += 1 + 4 * sureness
    teacher_right = rng.random(n) < 0.95
    teacher_label = np.where(teacher_right, gold, (gold + 1) % 4)
    teacher_logits = np.zeros((n, 4))
    teacher_logits[np.arange(n), teacher_label] = 5.0
    texts = ["w" * int(length) for length in lengths]
    from distill.predictions import Predictions

    return Predictions(texts, gold, teacher_logits, student_logits, teacher_seconds=0.01, student_seconds=0.001)


def promoted_registry(root: Path, pair: TinyPair) -> Registry:
    """A registry at ``root`` holding the pair, both promoted: as ``cascade redistill`` leaves it in production."""
    from serving.registry import Registry

    registry = Registry(root)
    for folder in (pair.student, pair.teacher):
        registry.add(folder)
    registry.promote("student", "tiny-student", "1")
    registry.promote("teacher", "tiny-teacher", "1")
    return registry


def as_chain(
    calibration: Calibration,
    middle_model: str,
    *,
    kind: str = "agreement",
    threshold: float = 0.6,
    temperature: float = 1.0,
) -> Calibration:
    """``calibration`` as the first stage of a chain through ``middle_model`` (what ``calibrate --middle`` stores)."""
    from serving.artifact import MiddleStage

    middle = MiddleStage(
        model=middle_model,
        kind=kind,
        threshold=threshold,
        temperature=temperature,
        seconds_per_request=0.001,
        dollars_per_hour=0.1,
        expected_served_share=(0.7, 0.2, 0.1),
    )
    return calibration.model_copy(update={"middle": middle})

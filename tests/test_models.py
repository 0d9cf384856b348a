"""Artifacts and backends on tiny real models: checksums, label sets, torch/ONNX parity."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from router import CascadePolicy, softmax
from serving.artifact import MANIFEST_NAME
from serving.backends import OnnxBackend, TorchBackend, load_backend
from serving.cascade import run_cascade
from serving.errors import ArtifactError
from serving.model_ref import check_same_labels, resolve_model
from tests.builders import LABELS, TEXTS, TinyPair


def test_manifest_lists_every_file_with_its_checksum(tiny_pair: TinyPair) -> None:
    manifest = json.loads((tiny_pair.student / MANIFEST_NAME).read_text())
    assert {"model.onnx", "config.json", "model.safetensors", "tokenizer.json"} <= set(manifest["files"])
    assert manifest["formats"] == ["hf", "onnx"] and manifest["labels"] == LABELS
    ref = resolve_model(str(tiny_pair.student))
    assert ref.version == "tiny-student:1" and ref.has_onnx


def test_tampered_artifact_is_refused(tiny_pair: TinyPair, tmp_path: Path) -> None:
    copy = tmp_path / "student"
    shutil.copytree(tiny_pair.student, copy)
    with (copy / "config.json").open("a") as handle:
        handle.write(" ")
    with pytest.raises(ArtifactError, match=r"checksum of config\.json"):
        resolve_model(str(copy))
    shutil.copy(tiny_pair.student / "config.json", copy / "config.json")
    assert resolve_model(str(copy)).version == "tiny-student:1"
    (copy / "model.onnx").unlink()
    with pytest.raises(ArtifactError, match=r"model\.onnx listed in the manifest is missing"):
        resolve_model(str(copy))


def test_label_mismatch_is_refused(tiny_pair: TinyPair, tmp_path: Path) -> None:
    copy = tmp_path / "teacher"
    shutil.copytree(tiny_pair.teacher, copy)
    manifest = json.loads((copy / MANIFEST_NAME).read_text())
    manifest["labels"] = ["balance", "card", "farewell"]
    (copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="only the student has \\['greeting'\\]"):
        check_same_labels(resolve_model(str(tiny_pair.student)), resolve_model(str(copy)))


def test_plain_hugging_face_folder_is_served_with_config_labels(tiny_pair: TinyPair, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    shutil.copytree(tiny_pair.teacher, plain)
    (plain / MANIFEST_NAME).unlink()
    ref = resolve_model(str(plain))
    assert ref.labels == tuple(LABELS) and ref.version.startswith("plain:") and ref.manifest is None
    with pytest.raises(ArtifactError, match="neither"):
        resolve_model(str(tmp_path))


def test_torch_and_onnx_give_the_same_probabilities(tiny_pair: TinyPair) -> None:
    ref = resolve_model(str(tiny_pair.student))
    texts = [*TEXTS, "a much longer text that pads the others " * 3]
    torch_probs = softmax(TorchBackend(ref, device="cpu", threads=1, max_length=64).logits(texts))
    onnx_probs = softmax(OnnxBackend(ref, device="cpu", threads=1, max_length=64).logits(texts))
    assert torch_probs.shape == (len(texts), len(LABELS))
    assert np.abs(torch_probs - onnx_probs).max() <= 1e-4


def test_auto_backend_prefers_onnx_when_exported(tiny_pair: TinyPair) -> None:
    assert load_backend(resolve_model(str(tiny_pair.student))).name == "onnx"
    assert load_backend(resolve_model(str(tiny_pair.teacher))).name == "torch"
    with pytest.raises(ArtifactError, match=r"model.onnx does not exist"):
        load_backend(resolve_model(str(tiny_pair.teacher)), backend="onnx")


def test_cascade_merges_teacher_answers_in_input_order(tiny_pair: TinyPair) -> None:
    student = load_backend(resolve_model(str(tiny_pair.student)))
    teacher = load_backend(resolve_model(str(tiny_pair.teacher)))
    teacher_calls: list[list[str]] = []

    async def call_student(texts: list[str]) -> np.ndarray:
        return student.logits(texts)

    async def call_teacher(texts: list[str]) -> np.ndarray:
        teacher_calls.append(texts)
        return teacher.logits(texts)

    student_conf = CascadePolicy(0.0).judge(student.logits(TEXTS)).confidence
    threshold = float(np.median(student_conf))  # about half escalate, whatever the random weights
    outcome = asyncio.run(
        run_cascade(
            TEXTS,
            "auto",
            policy=CascadePolicy(threshold),
            labels=LABELS,
            teacher_temperature=1.0,
            student=call_student,
            teacher=call_teacher,
        )
    )
    escalated = [i for i, r in enumerate(outcome.results) if r.escalated]
    assert escalated == [i for i, c in enumerate(student_conf) if c < threshold]
    assert teacher_calls == [[TEXTS[i] for i in escalated]]
    teacher_probs = softmax(teacher.logits(TEXTS))
    for i, result in enumerate(outcome.results):
        expected = teacher_probs[i] if i in escalated else softmax(student.logits([TEXTS[i]]))[0]
        assert result.served_by == ("teacher" if i in escalated else "student")
        assert result.label == LABELS[int(np.argmax(expected))]
        assert sum(result.scores.values()) == pytest.approx(1.0, abs=1e-5)


def test_forced_routes_call_only_that_model(tiny_pair: TinyPair) -> None:
    teacher = load_backend(resolve_model(str(tiny_pair.teacher)))

    async def fail(texts: list[str]) -> np.ndarray:
        raise AssertionError("the student must not be called on route=teacher")

    async def call_teacher(texts: list[str]) -> np.ndarray:
        return teacher.logits(texts)

    outcome = asyncio.run(
        run_cascade(
            TEXTS[:2],
            "teacher",
            policy=CascadePolicy(0.0),
            labels=LABELS,
            teacher_temperature=1.0,
            student=fail,
            teacher=call_teacher,
        )
    )
    assert [r.served_by for r in outcome.results] == ["teacher", "teacher"]
    assert not any(r.escalated for r in outcome.results)

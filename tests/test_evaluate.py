"""Evaluation metrics, the bag-of-embeddings student, and the evaluate report on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from distill.build import BuildOptions, distill_student
from distill.evaluate import evaluate_pair, format_table, macro_f1
from distill.training import TrainSettings
from serving.backends import load_backend
from serving.errors import ConfigError
from serving.model_ref import resolve_model
from tests.builders import LABELS, TinyPair


def test_macro_f1_known_values() -> None:
    assert macro_f1([0, 1, 2], [0, 1, 2], 3) == 1.0
    # label 0: tp=1 fp=1 fn=0 → 2/3; label 1: tp=0 fp=0 fn=1 → 0
    assert macro_f1([0, 0], [0, 1], 2) == pytest.approx((2 / 3 + 0) / 2)


def test_bag_of_embeddings_student_is_servable_and_reported(tiny_pair: TinyPair, tmp_path: Path) -> None:
    options = BuildOptions(name="tiny-bag", max_length=16, int8=True, train=TrainSettings(epochs=2, batch_size=4))
    manifest = distill_student(
        tiny_pair.teacher, tiny_pair.data, tmp_path / "bag", options, shape="bag_of_embeddings", bag_hidden_size=16
    )
    assert manifest.training["shape"] == {"kind": "bag_of_embeddings", "hidden_size": 16}
    assert manifest.metrics["onnx_fp32_max_abs_prob_diff"] <= 1e-4
    assert 0.0 <= manifest.metrics["onnx_int8_top1_agreement_with_fp32"] <= 1.0
    ref = resolve_model(str(tmp_path / "bag"))
    assert load_backend(ref, backend="torch").logits(["hello"]).shape == (1, len(LABELS))

    report = evaluate_pair(str(tiny_pair.teacher), str(tmp_path / "bag"), tiny_pair.data, timing_examples=4)
    assert set(report.student.timing) == {f"{b}_batch{n}" for b in ("torch", "onnx_fp32", "onnx_int8") for n in (1, 32)}
    assert set(report.teacher.timing) == {"torch_batch1", "torch_batch32"}
    assert report.student.parameters > 0 and report.student.size_on_disk["onnx_int8_bytes"] > 0
    # Agreement and accuracy, recomputed here from the two models' own answers on the same rows.
    texts = [json.loads(line)["text"] for line in tiny_pair.data.read_text().splitlines() if line.strip()]
    gold = [LABELS.index(json.loads(line)["label"]) for line in tiny_pair.data.read_text().splitlines() if line.strip()]
    teacher = load_backend(resolve_model(str(tiny_pair.teacher))).logits(texts).argmax(axis=1)
    student = load_backend(resolve_model(str(tmp_path / "bag"))).logits(texts).argmax(axis=1)
    assert report.agreement == pytest.approx(float(np.mean(teacher == student)))
    assert report.student.accuracy == pytest.approx(float(np.mean(student == np.asarray(gold))))
    assert report.data.rows == len(texts)
    assert "agreement student-teacher" in format_table(report)


def test_bag_with_bigrams_tells_word_order_apart_and_serves_through_onnx(tiny_pair: TinyPair, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification

    from serving.architectures import bag_of_embeddings_from_teacher

    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_pair.teacher)
    ids = torch.tensor([[5, 6, 7, 8], [8, 7, 6, 5]])  # the same tokens, in opposite orders
    mask = torch.ones_like(ids)
    plain, paired = bag_of_embeddings_from_teacher(teacher, 16), bag_of_embeddings_from_teacher(teacher, 16, 101)
    paired.classifier.load_state_dict(plain.classifier.state_dict())
    plain.eval(), paired.eval()
    with torch.no_grad():
        # The pairs' projection starts at zero: at step 0 the pairs only rescale the mean (more terms
        # in it), which the classifier's LayerNorm takes out but for its epsilon.
        assert torch.allclose(plain(ids, mask).logits, paired(ids, mask).logits, atol=1e-3)
        assert paired.bigram_projection is not None
        torch.nn.init.normal_(paired.bigram_projection.weight)  # as after training
        orders = paired(ids, mask).logits
        plain_orders = plain(ids, mask).logits
    assert torch.allclose(plain_orders[0], plain_orders[1], atol=1e-6)  # a plain bag cannot see order
    assert not torch.allclose(orders[0], orders[1], atol=1e-3)

    options = BuildOptions(name="tiny-bigram", max_length=16, train=TrainSettings(epochs=2, batch_size=4))
    manifest = distill_student(
        tiny_pair.teacher, tiny_pair.data, tmp_path / "bag", options, shape="bag_of_embeddings", bag_bigram_buckets=101
    )
    assert manifest.training["shape"] == {"kind": "bag_of_embeddings", "hidden_size": 256, "bigram_buckets": 101}
    assert manifest.metrics["onnx_fp32_max_abs_prob_diff"] <= 1e-4  # the hashing exported as it trained
    ref = resolve_model(str(tmp_path / "bag"))
    texts = ["hello there", "there hello", "x"]
    onnx, torch_logits = (load_backend(ref, backend=name).logits(texts) for name in ("onnx", "torch"))
    assert np.allclose(onnx, torch_logits, atol=1e-4)

    with pytest.raises(ConfigError, match="bigram buckets"):
        distill_student(tiny_pair.teacher, tiny_pair.data, tmp_path / "layers", options, bag_bigram_buckets=101)
    with pytest.raises(ConfigError, match="hidden size"):
        distill_student(tiny_pair.teacher, tiny_pair.data, tmp_path / "layers", options, bag_hidden_size=64)
    with pytest.raises(ConfigError, match="hidden size"):
        distill_student(
            tiny_pair.teacher, tiny_pair.data, tmp_path / "bag0", options, shape="bag_of_embeddings", bag_hidden_size=0
        )


def test_distill_command_sets_the_bags_width(tiny_pair: TinyPair, tmp_path: Path) -> None:
    from serving.artifact import read_manifest
    from serving.cli import main

    output = tmp_path / "wide-bag"
    common = ["--teacher", str(tiny_pair.teacher), "--train", str(tiny_pair.data), "--epochs", "1", "--no-onnx"]
    assert (
        main(["distill", *common, "--shape", "bag_of_embeddings", "--bag-hidden", "24", "--output", str(output)]) == 0
    )
    assert read_manifest(output).training["shape"]["hidden_size"] == 24
    assert main(["distill", *common, "--bag-hidden", "24", "--output", str(tmp_path / "layers")]) == 2  # not a bag

"""Distillation pieces: the loss, layer initialisation, data errors, and no half-written output."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from distill.build import BuildOptions, distill_student, staged_folder
from distill.data import read_jsonl
from distill.training import (
    NO_LABEL,
    TrainSettings,
    distillation_loss,
    predict_logits,
    student_from_teacher_layers,
)
from serving.errors import ArtifactError, DataError
from serving.model_ref import resolve_model
from tests.builders import LABELS, TinyPair


def test_soft_loss_is_zero_when_student_matches_teacher_and_scales_with_t_squared() -> None:
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    assert float(distillation_loss(logits, logits, None, temperature=3.0, alpha=1.0)) == pytest.approx(0, abs=1e-6)
    student = torch.zeros(1, 2)
    teacher = torch.tensor([[math.log(3.0), 0.0]])  # teacher probs at T=1: 0.75 / 0.25
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert float(distillation_loss(student, teacher, None, temperature=1.0, alpha=1.0)) == pytest.approx(kl, rel=1e-5)


def test_alpha_mixes_soft_and_hard() -> None:
    torch.manual_seed(0)
    student, teacher = torch.randn(4, 3), torch.randn(4, 3)
    labels = torch.tensor([0, 1, 2, 0])
    soft = distillation_loss(student, teacher, None, temperature=2.0, alpha=0.5)
    hard = distillation_loss(student, None, labels, temperature=2.0, alpha=0.5)
    assert float(hard) == pytest.approx(float(torch.nn.functional.cross_entropy(student, labels)))
    mixed = distillation_loss(student, teacher, labels, temperature=2.0, alpha=0.3)
    assert float(mixed) == pytest.approx(0.3 * float(soft) + 0.7 * float(hard), rel=1e-5)
    with pytest.raises(ValueError, match="alpha"):
        distillation_loss(student, teacher, labels, temperature=2.0, alpha=1.5)


def test_rows_without_a_label_train_on_the_teacher_alone() -> None:
    torch.manual_seed(0)
    student, teacher = torch.randn(4, 3), torch.randn(4, 3)
    labels = torch.tensor([0, NO_LABEL, 2, NO_LABEL])
    soft = distillation_loss(student, teacher, None, temperature=2.0, alpha=1.0)
    hard_on_labelled = torch.nn.functional.cross_entropy(student[[0, 2]], labels[[0, 2]])
    mixed = distillation_loss(student, teacher, labels, temperature=2.0, alpha=0.3)
    assert float(mixed) == pytest.approx(0.3 * float(soft) + 0.7 * float(hard_on_labelled), rel=1e-5)
    unlabelled = torch.full((4,), NO_LABEL)
    assert float(distillation_loss(student, teacher, unlabelled, temperature=2.0, alpha=0.3)) == pytest.approx(
        float(soft), rel=1e-5
    )
    with pytest.raises(ValueError, match="teacher logits, labels, or both"):
        distillation_loss(student, None, unlabelled, temperature=2.0, alpha=0.3)


def test_predictions_come_back_in_the_rows_order_whatever_their_lengths(tiny_pair: TinyPair) -> None:
    model = AutoModelForSequenceClassification.from_pretrained(tiny_pair.teacher).eval()
    torch.manual_seed(1)
    ids = torch.randint(1000, 2000, (7, 9))
    mask = torch.zeros(7, 9, dtype=torch.long)
    for row, length in enumerate([9, 2, 5, 1, 9, 3, 7]):
        mask[row, :length] = 1
    batched = predict_logits(model, ids, mask, batch_size=3)
    with torch.inference_mode():
        one_by_one = torch.cat(
            [
                model(
                    input_ids=ids[i : i + 1, : int(mask[i].sum())], attention_mask=mask[i : i + 1, : int(mask[i].sum())]
                ).logits
                for i in range(7)
            ]
        )
    assert torch.allclose(batched, one_by_one, atol=1e-5)


def test_student_starts_from_the_chosen_teacher_layers(tiny_pair: TinyPair) -> None:
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_pair.teacher)
    student = student_from_teacher_layers(teacher, [1])
    assert student.config.num_hidden_layers == 1
    t, s = teacher.state_dict(), student.state_dict()
    for key in s:
        source = key.replace("encoder.layer.0.", "encoder.layer.1.")
        assert torch.equal(s[key], t[source]), key
    with pytest.raises(ValueError, match=r"indices in \[0, 1\]"):
        student_from_teacher_layers(teacher, [2])


def test_narrow_student_starts_from_leading_slices_of_the_teacher(tiny_pair: TinyPair) -> None:
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_pair.teacher)  # hidden 32, 2 heads
    student = student_from_teacher_layers(teacher, [0, 1], width=0.5)
    assert (student.config.hidden_size, student.config.num_attention_heads) == (16, 1)
    assert student.config.intermediate_size == 32
    t, s = teacher.state_dict(), student.state_dict()
    query = "bert.encoder.layer.1.attention.self.query.weight"
    assert s[query].shape == (16, 16) and torch.equal(s[query], t[query][:16, :16])
    assert torch.equal(s["classifier.weight"], t["classifier.weight"][:, :16])
    with pytest.raises(ValueError, match="width"):
        student_from_teacher_layers(teacher, [0], width=0)


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("{not json", "not valid JSON"),
        ('{"label": "card"}', "missing or empty 'text'"),
        ('{"text": "hi"}', "missing 'label'"),
        ('{"text": "hi", "label": "weather"}', "label 'weather' is not one the teacher knows"),
        ('{"text": "hi", "label": 3}', "'label' must be a string"),
    ],
)
def test_bad_dataset_lines_name_file_and_line(tmp_path: Path, line: str, problem: str) -> None:
    path = _write(tmp_path / "data.jsonl", ['{"text": "fine", "label": "card"}', line])
    with pytest.raises(DataError) as caught:
        read_jsonl(path, known_labels=LABELS)
    assert caught.value.message.startswith(f"{path}:2: {problem}")


def test_unlabelled_rows_are_fine_for_soft_only_training(tmp_path: Path) -> None:
    data = read_jsonl(
        _write(tmp_path / "d.jsonl", ['{"text": "a"}', '{"text": "b", "label": "card"}']),
        require_labels=False,
    )
    assert data.labels == [None, "card"]


def test_staged_folder_leaves_nothing_when_the_block_fails(tmp_path: Path) -> None:
    destination = tmp_path / "artifact"
    with pytest.raises(RuntimeError), staged_folder(destination, overwrite=False) as staging:
        (staging / "weights.bin").write_bytes(b"half")
        raise RuntimeError("killed midway")
    assert list(tmp_path.iterdir()) == []


def test_failed_distillation_leaves_no_artifact(tiny_pair: TinyPair, tmp_path: Path) -> None:
    bad = _write(tmp_path / "bad.jsonl", ['{"text": "hi", "label": "card"}', '{"text": "x", "label": "weather"}'])
    with pytest.raises(DataError, match=r"bad\.jsonl:2"):
        distill_student(tiny_pair.teacher, bad, tmp_path / "out", BuildOptions(name="s"), layers=[0])
    assert not (tmp_path / "out").exists()
    with pytest.raises(ArtifactError, match="already exists"):
        distill_student(tiny_pair.teacher, tiny_pair.data, tiny_pair.student, BuildOptions(name="s"), layers=[0])


def test_distilled_student_is_a_servable_artifact(tiny_pair: TinyPair, tmp_path: Path) -> None:
    options = BuildOptions(name="tiny-s", max_length=16, train=TrainSettings(epochs=2, batch_size=4, seed=3))
    manifest = distill_student(
        tiny_pair.teacher, tiny_pair.data, tmp_path / "s", options, layers=[1], dev_path=tiny_pair.data
    )
    ref = resolve_model(str(tmp_path / "s"))
    assert ref.labels == tuple(LABELS) and ref.has_onnx
    assert manifest.parent == "tiny-teacher:1" and manifest.training["shape"] == {
        "kind": "teacher_layers",
        "layers": [1],
        "width": 1.0,
    }
    assert manifest.metrics["onnx_fp32_max_abs_prob_diff"] <= 1e-4
    assert len(manifest.training["history"]) >= 1
    assert json.loads((tmp_path / "s" / "manifest.json").read_text())["role"] == "student"


def test_transfer_texts_train_the_student_on_the_teachers_answers(tiny_pair: TinyPair, tmp_path: Path) -> None:
    transfer = _write(tmp_path / "transfer.jsonl", ['{"text": "where is my card"}', '{"text": "rain today?"}'] * 4)
    options = BuildOptions(name="s", max_length=16, onnx=False, train=TrainSettings(epochs=1, batch_size=4))
    plain = distill_student(tiny_pair.teacher, tiny_pair.data, tmp_path / "plain", options, layers=[0])
    more = distill_student(
        tiny_pair.teacher, tiny_pair.data, tmp_path / "more", options, layers=[0], transfer_path=transfer
    )
    assert plain.training["transfer"] is None and plain.training["augmented"] is None
    assert more.training["transfer"] == {"source": str(transfer), "rows": 8}
    steps = {name: manifest.training["history"][0]["loss"] for name, manifest in (("plain", plain), ("more", more))}
    assert steps["plain"] != steps["more"]  # the transfer rows really entered training
    augmented = distill_student(tiny_pair.teacher, tiny_pair.data, tmp_path / "aug", options, layers=[0], augment=3)
    assert 0 < augmented.training["augmented"]["rows"] <= 3 * len(read_jsonl(tiny_pair.data).texts)


def test_a_fixed_seed_reproduces_a_run(tiny_pair: TinyPair, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    def run(folder: str, seed: int) -> dict[str, torch.Tensor]:
        settings = TrainSettings(epochs=2, batch_size=2, seed=seed)
        options = BuildOptions(name="s", max_length=16, onnx=False, train=settings)
        distill_student(tiny_pair.teacher, tiny_pair.data, tmp_path / folder, options, layers=[0])
        return load_file(tmp_path / folder / "model.safetensors")

    first, second, other_seed = run("a", 7), run("b", 7), run("c", 8)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other_seed[k]) for k in first)  # the seed really matters

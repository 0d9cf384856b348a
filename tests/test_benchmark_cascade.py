"""The cascade benchmark's plumbing on tiny models: calibrate on one half, report on the other."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from benchmarks.cascade import DevOutputs, calibration_file, halves, run_cascade_dataset, write_cascade_report
from benchmarks.distillation import CALIBRATION_FILE, PLANS, DatasetPlan, _subsample, keep_calibration_rows
from tests.builders import TinyPair


def test_halves_are_disjoint_and_cover_dev() -> None:
    calibration, evaluation = halves(25, seed=3)
    assert len(calibration) == 12 and len(evaluation) == 13
    assert set(calibration).isdisjoint(evaluation) and set(calibration) | set(evaluation) == set(range(25))
    assert not np.array_equal(halves(25, seed=4)[0], calibration)  # each seed halves differently


def test_cascade_benchmark_reports_held_out_figures(tiny_pair: TinyPair, tmp_path: Path) -> None:
    work, datasets, output = tmp_path / "work", tmp_path / "datasets", tmp_path / "out"
    (datasets / "tiny").mkdir(parents=True)
    rows = tiny_pair.data.read_text().splitlines() * 4  # 24 rows: 12 to calibrate on, 12 held out
    (datasets / "tiny" / "dev.jsonl").write_text("\n".join(rows) + "\n")
    shutil.copytree(tiny_pair.teacher, work / "tiny" / "teacher")
    shutil.copytree(tiny_pair.student, work / "tiny" / "student-layers")
    shutil.copytree(tiny_pair.student, work / "tiny" / "student-bag")

    result = run_cascade_dataset("tiny", datasets, work, output, threads=1, seeds=2)
    assert result["halves"] == [12, 12] and len(result["per_seed"]) == 2
    seconds = result["seconds_per_request"]
    for method, figures in result["seed0"].items():
        escalated = figures["escalation_rate"] * 12
        assert escalated == pytest.approx(round(escalated)), method  # a share of the 12 evaluation texts
        assert sum(figures["served_share"]) == pytest.approx(1.0)
        assert figures["gap_points"] == pytest.approx(100 * (figures["teacher_accuracy"] - figures["accuracy"]))
        assert figures["promise_kept"] is (figures["gap_points"] <= 0.3 + 1e-9)
    layers = result["seed0"]["layers max_prob"]
    # a two-model cascade pays the student always and the teacher for what it escalates
    expected_cost = (seconds["layers"] + layers["escalation_rate"] * seconds["teacher"]) / seconds["teacher"]
    assert layers["cost_ratio"] == pytest.approx(expected_cost)
    chain = result["seed0"]["chain bag → layers → teacher"]
    _, layers_share, teacher_share = chain["served_share"]
    layers_called = chain["threshold"][1] <= 1  # a middle stage that keeps nothing is skipped, not paid
    expected_chain = (
        seconds["bag"]
        + layers_called * (layers_share + teacher_share) * seconds["layers"]
        + teacher_share * seconds["teacher"]
    ) / seconds["teacher"]
    assert chain["cost_ratio"] == pytest.approx(expected_chain)
    summary = result["summary"]["layers max_prob"]["cost_ratio"]
    values = [seed["layers max_prob"]["cost_ratio"] for seed in result["per_seed"]]
    assert summary["min"] == min(values) and summary["max"] == max(values)

    write_cascade_report([result], "cascade benchmark-cascade", output)
    report = (output / "cascade.md").read_text()
    assert "| chain bag → layers → teacher |" in report and (output / "cascade-tiny-layers.png").exists()


def _rows(count: int, prefix: str) -> str:
    return "".join(f'{{"text": "{prefix} {i}", "label": "{"pos" if i % 2 else "neg"}"}}\n' for i in range(count))


def test_calibration_rows_come_from_the_left_out_rows_and_no_step_sees_them(tmp_path: Path) -> None:
    train = tmp_path / "train.jsonl"
    train.write_text(_rows(30, "text"))
    plan = DatasetPlan("tiny", train_limit=10, bag_transfer=True, calibration_rows=6)
    sampled, left_out = _subsample(train, plan.train_limit, tmp_path)
    assert left_out is not None
    transfer = keep_calibration_rows(plan, left_out, tmp_path)
    assert transfer is not None
    calibration = (tmp_path / CALIBRATION_FILE).read_text().splitlines()
    trained = sampled.read_text().splitlines() + transfer.read_text().splitlines()
    assert len(calibration) == 6 and len(trained) == 24
    assert set(calibration).isdisjoint(trained) and set(calibration) | set(trained) == set(
        train.read_text().splitlines()
    )

    # a plan without calibration rows leaves no file behind from an earlier plan
    assert keep_calibration_rows(DatasetPlan("tiny", train_limit=10), left_out, tmp_path) == left_out
    assert not (tmp_path / CALIBRATION_FILE).exists()
    with pytest.raises(ValueError, match="train_limit"):
        keep_calibration_rows(DatasetPlan("tiny", calibration_rows=6), None, tmp_path)


def test_every_calibration_half_gets_the_extra_rows_and_evaluation_stays_on_dev() -> None:
    dev = DevOutputs([f"t{i}" for i in range(15)], np.zeros(15, dtype=int), {}, dev_rows=10)
    for seed in range(3):
        calibration, evaluation = dev.split(seed)
        assert set(range(10, 15)) <= set(calibration) and max(evaluation) < 10
        assert set(calibration).isdisjoint(evaluation) and set(calibration) | set(evaluation) == set(range(15))


def test_the_calibration_file_must_be_the_plans(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(PLANS, "tiny", DatasetPlan("tiny", train_limit=10, calibration_rows=3))
    with pytest.raises(FileNotFoundError, match="benchmark-distill"):
        calibration_file("tiny", tmp_path)
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / CALIBRATION_FILE).write_text(_rows(4, "x"))
    with pytest.raises(ValueError, match="4 rows, the plan keeps 3"):
        calibration_file("tiny", tmp_path)
    (tmp_path / "tiny" / CALIBRATION_FILE).write_text(_rows(3, "x"))
    assert calibration_file("tiny", tmp_path) == tmp_path / "tiny" / CALIBRATION_FILE
    assert calibration_file("not-a-plan", tmp_path) is None


def test_extra_calibration_rows_join_calibration_only(
    tiny_pair: TinyPair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work, datasets, output = tmp_path / "work", tmp_path / "datasets", tmp_path / "out"
    (datasets / "tiny").mkdir(parents=True)
    rows = tiny_pair.data.read_text().splitlines()
    (datasets / "tiny" / "dev.jsonl").write_text("\n".join(rows * 4) + "\n")
    for kind in ("teacher", "student-layers", "student-bag"):
        shutil.copytree(tiny_pair.teacher if kind == "teacher" else tiny_pair.student, work / "tiny" / kind)
    (work / "tiny" / CALIBRATION_FILE).write_text("\n".join(rows * 2) + "\n")
    monkeypatch.setitem(PLANS, "tiny", DatasetPlan("tiny", train_limit=10, calibration_rows=len(rows) * 2))

    result = run_cascade_dataset("tiny", datasets, work, output, threads=1, seeds=1)
    assert result["halves"] == [12, 12] and result["extra_calibration_rows"] == len(rows) * 2
    assert result["dev_rows"] == 24
    escalated = result["seed0"]["layers max_prob"]["escalation_rate"] * 12
    assert escalated == pytest.approx(round(escalated))  # measured on the 12 evaluation texts only
    write_cascade_report([result], "cascade benchmark-cascade", output)
    assert f"also has the {len(rows) * 2:,} training rows" in (output / "cascade.md").read_text()

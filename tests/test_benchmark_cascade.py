"""The cascade benchmark's plumbing on tiny models: calibrate on one half, report on the other."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from benchmarks.cascade import halves, run_cascade_dataset, write_cascade_report
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

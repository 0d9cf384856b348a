"""The cascade benchmark's plumbing on tiny models: calibrate on one half, report on the other."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from benchmarks.cascade import run_cascade_dataset, write_cascade_report
from tests.builders import TinyPair


def test_cascade_benchmark_reports_held_out_figures(tiny_pair: TinyPair, tmp_path: Path) -> None:
    work, datasets, output = tmp_path / "work", tmp_path / "datasets", tmp_path / "out"
    (datasets / "tiny").mkdir(parents=True)
    rows = tiny_pair.data.read_text().splitlines() * 4  # 24 rows: 12 to calibrate on, 12 held out
    (datasets / "tiny" / "dev.jsonl").write_text("\n".join(rows) + "\n")
    shutil.copytree(tiny_pair.teacher, work / "tiny" / "teacher")
    shutil.copytree(tiny_pair.student, work / "tiny" / "student-layers")
    shutil.copytree(tiny_pair.student, work / "tiny" / "student-bag")

    result = run_cascade_dataset("tiny", datasets, work, output, threads=1)
    layers = result["students"]["layers"]
    assert layers["held_out_rows"] == 12
    assert layers["held_out"]["examples"] == 12
    live, expected = layers["held_out"], layers["expected_on_calibration_half"]
    escalated = live["chosen"]["escalation_rate"] * 12
    assert escalated == pytest.approx(round(escalated))  # a share of the 12 held-out rows
    assert layers["accuracy_gap_points"] == pytest.approx(
        100 * (live["teacher_only"]["quality"] - live["chosen"]["quality"])
    )
    assert layers["cost_ratio_to_teacher_only"] == pytest.approx(
        live["chosen"]["dollars_per_1000"] / live["teacher_only"]["dollars_per_1000"]
    )
    low, high = expected["escalation_rate_95ci"]
    assert layers["escalation_within_expected_interval"] is (low <= live["chosen"]["escalation_rate"] <= high)
    assert live["chosen"]["threshold"] == layers["calibration"]["threshold"]  # the calibrated τ, applied unseen
    write_cascade_report([result], "cascade benchmark-cascade", output)
    report = (output / "cascade.md").read_text()
    assert "| tiny | layers |" in report and (output / "cascade-tiny-layers.png").exists()

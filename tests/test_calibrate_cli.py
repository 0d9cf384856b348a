"""`cascade calibrate` and `cascade evaluate --curve` end to end on tiny models (the CLI functions)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from serving.artifact import read_manifest
from serving.cli import main
from serving.model_ref import resolve_model
from tests.builders import TinyPair


@pytest.fixture
def student_copy(tiny_pair: TinyPair, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_pair.student, tmp_path / "student"))


def test_calibrate_writes_the_choice_into_the_manifest(
    tiny_pair: TinyPair, student_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report_path = tmp_path / "calibration.json"
    code = main(
        [
            "calibrate", "--teacher", str(tiny_pair.teacher), "--student", str(student_copy),
            "--data", str(tiny_pair.data), "--max-escalation", "0.5", "--output", str(report_path),
        ]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "escalation rate" in printed and "share of the oracle's savings" in printed
    report = json.loads(report_path.read_text())
    manifest = read_manifest(student_copy)
    assert manifest.calibration is not None and manifest.calibration.reference_confidence is not None
    assert manifest.temperature == pytest.approx(report["temperature"])
    assert manifest.calibration.threshold == report["calibration"]["threshold"]
    assert manifest.calibration.expected.chosen.escalation_rate <= 0.5
    assert sum(manifest.calibration.reference_confidence.shares) == pytest.approx(1.0, abs=1e-4)
    resolve_model(str(student_copy))  # checksums still valid after the manifest rewrite


def test_calibrate_needs_exactly_one_target(tiny_pair: TinyPair, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["calibrate", "--teacher", str(tiny_pair.teacher), "--student", str(tiny_pair.student)]
    assert main([*args, "--data", str(tiny_pair.data), "--dry-run"]) == 2
    assert "exactly one target" in capsys.readouterr().err


def test_curve_json_and_png(tiny_pair: TinyPair, student_copy: Path, tmp_path: Path) -> None:
    output = tmp_path / "curve.json"
    args = ["--teacher", str(tiny_pair.teacher), "--student", str(student_copy), "--data", str(tiny_pair.data)]
    assert main(["calibrate", *args, "--max-quality-loss", "0"]) == 0
    assert main(["evaluate", *args, "--curve", "--output", str(output)]) == 0
    result = json.loads(output.read_text())
    qualities = [p["quality"] for p in result["points"]]
    assert result["points"][0]["escalation_rate"] == 0 and result["points"][-1]["escalation_rate"] == 1
    assert result["oracle"]["quality"] >= max(qualities) - 1e-9  # nothing beats the oracle
    assert result["chosen"]["chosen"]["quality"] >= result["teacher_only"]["quality"] - 1e-9
    assert output.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_calibrate_states_its_bound_and_confidence(
    tiny_pair: TinyPair, student_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--teacher", str(tiny_pair.teacher), "--student", str(student_copy), "--data", str(tiny_pair.data)]
    assert main(["calibrate", *args, "--max-quality-loss", "5", "--confidence", "0.8"]) == 0
    printed = capsys.readouterr().out
    assert "with 80% confidence (one-sided)" in printed
    manifest = read_manifest(student_copy)
    assert manifest.calibration is not None and manifest.calibration.confidence == 0.8
    assert main(["calibrate", *args, "--max-quality-loss", "5", "--point-estimate", "--dry-run"]) == 0
    assert "point estimate" in capsys.readouterr().out
    assert main(["calibrate", *args, "--max-quality-loss", "5", "--confidence", "1.2"]) == 2
    assert "--confidence must be" in capsys.readouterr().err


def test_calibrate_says_what_the_bound_costs(
    tiny_pair: TinyPair, student_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--teacher", str(tiny_pair.teacher), "--student", str(student_copy), "--data", str(tiny_pair.data)]
    assert main(["calibrate", *args, "--max-quality-loss", "5", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    # six texts: the measured gap alone would keep every text with the student, the bound escalates some
    assert "escalation rate 0.333" in printed
    assert "on the gap measured here alone this rule would escalate 0.000" in printed


def test_split_holds_rows_out_of_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "labelled.jsonl"
    rows = [json.dumps({"text": f"text {i}", "label": "a" if i % 2 else "b"}) for i in range(50)]
    data.write_text("\n".join(rows) + "\n")
    assert main(["split", "--data", str(data), "--held", "10", "--into", str(tmp_path / "split")]) == 0
    held = (tmp_path / "split" / "labelled.held.jsonl").read_text().splitlines()
    rest = (tmp_path / "split" / "labelled.rest.jsonl").read_text().splitlines()
    assert len(held) == 10 and len(rest) == 40 and sorted(held + rest) == sorted(rows)
    assert main(["split", "--data", str(data), "--held", "50", "--into", str(tmp_path / "split")]) == 2
    assert "cannot hold out 50 of 50 rows" in capsys.readouterr().err

"""``cascade redistill``: triggers, the lock, training on logged teacher outputs, the gate, promotion."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from distill.redistill import RedistillSettings, _exclusive, run_redistill
from serving.constants import KEEP_TEXT_FOR_REDISTILL
from serving.model_ref import resolve_model
from serving.registry import Registry
from serving.traffic_log import TrafficLogWriter, TrafficRecord
from tests.builders import TinyPair

WORDS = [
    "card",
    "lost",
    "stolen",
    "refund",
    "money",
    "transfer",
    "balance",
    "account",
    "address",
    "phone",
    "pin",
    "cash",
    "atm",
    "fee",
    "loan",
    "rate",
]


def _rule(text: str) -> list[float]:
    """The 'teacher': class a for card trouble, b for money movement, c for everything else."""
    words = set(text.split())
    index = 0 if words & {"card", "lost", "stolen", "pin"} else 1 if words & {"money", "transfer", "cash"} else 2
    return [4.0 if i == index else 0.0 for i in range(3)]


def _texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.sample(WORDS, 4)) for _ in range(n)]


@pytest.fixture()
def setup(tiny_pair: TinyPair, tmp_path: Path) -> tuple[Registry, Path, TinyPair]:
    """A registry (tiny student 1 promoted, the teacher), and a traffic log of 400 texts the teacher answered.

    The logged teacher outputs follow a keyword rule (a random tiny teacher answers nearly one class
    for everything, which nothing could fail to imitate): a learnable signal, as real traffic has.
    """
    registry = Registry(tmp_path / "registry")
    registry.add(tiny_pair.student)
    registry.add(tiny_pair.teacher)
    registry.promote("student", "tiny-student", "1")
    registry.promote("teacher", "tiny-teacher", "1")
    teacher = resolve_model(str(tiny_pair.teacher))
    texts = _texts(400, seed=1)
    logits = np.asarray([_rule(text) for text in texts])
    writer = TrafficLogWriter(
        tmp_path / "log", list(teacher.labels), text_policy=KEEP_TEXT_FOR_REDISTILL, flush_interval_s=3600
    )
    for i, (text, row) in enumerate(zip(texts, logits, strict=True)):
        writer.record(
            TrafficRecord(f"r{i}", 1_700_000_000 + i, "escalation", text, "a", [0.4, 0.3, 0.3], row.tolist(), "s", "t")
        )
    writer.close()
    return registry, tmp_path / "log", tiny_pair


def _settings(registry: Registry, log: Path, tmp_path: Path, **overrides: object) -> RedistillSettings:
    base = {
        "registry": registry.root,
        "traffic_log": log,
        "state": tmp_path / "state",
        "min_new_labels": 10_000,  # no trigger unless a test asks for one
        "epochs": 12,
        "learning_rate": 3e-3,
        "max_length": 32,
        "threads": 1,
        "max_quality_loss": 100.0,  # tiny random teachers: any calibration point will do
    }
    return RedistillSettings(**{**base, **overrides})  # type: ignore[arg-type]


def test_no_trigger_means_no_training_and_nothing_promoted(
    setup: tuple[Registry, Path, TinyPair], tmp_path: Path
) -> None:
    registry, log, _ = setup
    report = run_redistill(_settings(registry, log, tmp_path), log=lambda _: None)
    assert report.outcome == "not_needed"
    assert report.new_teacher_labels == 400
    assert registry.current("student").version == "1"  # type: ignore[union-attr]
    assert report.report_path is not None and Path(report.report_path).exists()
    assert (
        'cascade_redistill_last_outcome{outcome="not_needed"} 1' in (tmp_path / "state" / "redistill.prom").read_text()
    )


def test_a_second_run_while_one_holds_the_lock_does_nothing(
    setup: tuple[Registry, Path, TinyPair], tmp_path: Path
) -> None:
    registry, log, _ = setup
    settings = _settings(registry, log, tmp_path, force=True)
    with _exclusive(settings.state / "redistill.lock") as acquired:
        assert acquired
        report = run_redistill(settings, log=lambda _: None)
    assert report.outcome == "skipped"
    assert registry.current("student").version == "1"  # type: ignore[union-attr]


@pytest.mark.slow
def test_a_candidate_trained_on_the_teachers_labels_is_promoted_and_a_shuffled_one_rejected(
    setup: tuple[Registry, Path, TinyPair], tmp_path: Path
) -> None:
    registry, log, _ = setup
    better = run_redistill(_settings(registry, log, tmp_path / "a", force=True), log=lambda _: None)
    evaluation = better.evaluation
    assert better.outcome == "promoted", better.why
    assert evaluation is not None
    assert evaluation.candidate.agreement > evaluation.current.agreement + 0.05  # it learned something
    current = registry.current("student")
    assert current is not None and current.version == "2"
    assert current.manifest.calibration is not None
    assert current.manifest.calibration.signal in ("max_prob", "margin", "entropy")
    assert current.manifest.training["redistilled_from"] == "tiny-student:1"
    assert better.report_path is not None
    report = json.loads(Path(better.report_path).read_text())
    assert report["outcome"] == "promoted" and report["candidate"] == "tiny-student:2"
    # the held-back slice never reached training
    assert report["training"]["logged_texts"] + report["evaluation"]["holdout_texts"] == len(set(_texts(400, seed=1)))
    assert np.isfinite(report["evaluation"]["candidate"]["cpu_ms_per_text"])

    # From the promoted student, a candidate trained on shuffled teacher outputs: worse, so rejected.
    worse = run_redistill(
        _settings(registry, log, tmp_path / "b", force=True, shuffle_training_labels=True), log=lambda _: None
    )
    assert worse.outcome == "rejected", worse.why
    assert "agreement" in worse.why
    assert registry.current("student").version == "2"  # type: ignore[union-attr]
    assert [e.version for e in registry.entries() if e.name == "tiny-student"] == ["1", "2"]  # never added


@pytest.mark.slow
def test_a_chains_student_is_recalibrated_as_a_chain_through_the_same_middle_model(
    setup: tuple[Registry, Path, TinyPair], tmp_path: Path
) -> None:
    import shutil

    from distill.calibrate import calibrate
    from serving.artifact import read_manifest, write_manifest
    from tests.builders import as_chain, build_tiny_model, synthetic_predictions

    _, log, pair = setup
    middle = build_tiny_model(tmp_path / "middle", layers=1, seed=3, role="middle", onnx=False)
    student = Path(shutil.copytree(pair.student, tmp_path / "student"))
    stored = calibrate(synthetic_predictions(300, 1, length_matters=False), "max_escalation", 0.3).calibration
    chained = as_chain(stored, "tiny-middle:1", threshold=0.5)
    manifest = read_manifest(student)
    write_manifest(student, manifest.model_copy(update={"calibration": chained}))
    registry = Registry(tmp_path / "chain-registry")
    for folder in (student, pair.teacher, middle):
        registry.add(folder)
    registry.promote("student", "tiny-student", "1")
    registry.promote("teacher", "tiny-teacher", "1")
    report = run_redistill(_settings(registry, log, tmp_path / "chain", force=True, epochs=2), log=lambda _: None)
    assert report.evaluation is not None
    candidate = report.evaluation.candidate
    assert candidate.calibration is not None, candidate.calibration_error
    assert candidate.calibration["middle"] == "tiny-middle:1"


def test_the_gate_judges_agreement_first_and_cost_by_shape_then_time() -> None:
    from distill.gate import StudentMeasurement, decide_promotion

    calibrated = {"calibration": {"temperature": 1.0, "signal": "max_prob", "threshold": 0.5}}
    current = StudentMeasurement(agreement=0.90, cpu_ms_per_text=0.040, parameters=1000)
    same_shape_noisy = StudentMeasurement(**calibrated, agreement=0.93, cpu_ms_per_text=0.060, parameters=1000)
    bigger_slower = StudentMeasurement(**calibrated, agreement=0.95, cpu_ms_per_text=0.080, parameters=5000)
    bigger_as_fast = StudentMeasurement(**calibrated, agreement=0.95, cpu_ms_per_text=0.041, parameters=5000)
    worse = StudentMeasurement(**calibrated, agreement=0.85, cpu_ms_per_text=0.020, parameters=500)
    uncalibrated = worse.model_copy(update={"calibration": None, "calibration_error": "x"})

    def outcome(candidate: StudentMeasurement) -> str:
        return decide_promotion(candidate, current, cost_tolerance=0.1).outcome

    assert outcome(same_shape_noisy) == "promoted"
    decision = decide_promotion(bigger_slower, current, cost_tolerance=0.1)
    assert (decision.outcome, decision.why) == ("rejected", "costlier: 0.080 ms/text > 0.044")
    assert outcome(bigger_as_fast) == "promoted"
    assert outcome(worse) == "rejected"
    assert outcome(uncalibrated) == "rejected"


@pytest.mark.slow
def test_a_run_killed_while_training_promotes_nothing_and_frees_the_lock(
    setup: tuple[Registry, Path, TinyPair], tmp_path: Path
) -> None:
    import os
    import subprocess
    import sys

    registry, log, _ = setup
    state = tmp_path / "state"
    command = [sys.executable, "-m", "serving.cli", "redistill", "--registry", str(registry.root)]
    command += ["--traffic-log", str(log), "--state", str(state), "--force", "--epochs", "500", "--threads", "1"]
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment)
    try:
        assert job.stdout is not None
        for line in job.stdout:  # kill it once it is training
            if line.startswith("redistill: training"):
                break
        else:
            raise AssertionError(f"the job ended before training (exit {job.wait()})")
        job.kill()
    finally:
        job.kill()
        job.wait()
    assert registry.current("student").version == "1"  # type: ignore[union-attr]
    assert [e.version for e in registry.entries() if e.name == "tiny-student"] == ["1"]
    with _exclusive(state / "redistill.lock") as acquired:
        assert acquired, "a killed run must not leave the lock held"


def test_the_calibration_slice_keeps_escalated_texts_at_the_shadow_rate() -> None:
    """Logged: every escalation, a share of the rest. Kept for calibration: that same share of both."""
    from distill.redistill import _in_holdout, calibration_slice

    escalated = {f"hard text {i}": "escalation" for i in range(4000)}
    shadowed = {f"easy text {i}": "shadow" for i in range(500)}
    reasons = {**escalated, **shadowed}
    assert calibration_slice(reasons, None) == list(reasons)
    kept = calibration_slice(reasons, 0.2)
    assert set(shadowed) <= set(kept)
    share = len(set(kept) & set(escalated)) / len(escalated)
    assert 0.18 < share < 0.22
    assert kept == calibration_slice(reasons, 0.2)  # stable: the same texts every run
    # independent of the holdout split: within the held-back texts the share is the same
    held = [t for t in escalated if _in_holdout(t, 0.25)]
    held_share = len(set(held) & set(kept)) / len(held)
    assert 0.15 < held_share < 0.25

"""`calibrate` chooses the rule and threshold on data it is given, and keeps a learned rule only where it pays."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from distill.calibrate import calibrate, policy_from, rule_scores, seen_in_training, write_calibration
from router import Signal
from serving.artifact import read_manifest
from serving.config import CascadeSettings
from serving.errors import ConfigError
from serving.model_ref import resolve_model
from serving.policy import policy_in_force
from tests.builders import TinyPair, synthetic_predictions


def test_auto_keeps_the_learned_rule_where_it_is_cheaper_and_it_holds_on_new_data() -> None:
    report = calibrate(synthetic_predictions(1500, 0, length_matters=True), "max_quality_loss", 1.0)
    calibration = report.calibration
    assert calibration.signal is Signal.LEARNED and calibration.rule is not None
    assert calibration.rule_choice is not None and calibration.rule_choice.kept.startswith("learned")
    costs = calibration.rule_choice.dollars_per_1000
    kept_cost = costs[calibration.rule_choice.kept]
    assert kept_cost is not None and all(c is None or kept_cost <= c for c in costs.values())
    assert costs["max_prob"] is None or kept_cost < costs["max_prob"]
    assert calibration.expected.chosen.quality_loss_bound is not None
    assert calibration.expected.chosen.quality_loss_bound <= 0.01 + 1e-12
    # new texts from the same population: the rule and threshold keep the gap within the target
    fresh = synthetic_predictions(4000, 1, length_matters=True)
    policy = policy_from(calibration, report.temperature)
    escalate = rule_scores(fresh, policy) < policy.threshold
    student_right, teacher_right = fresh.correctness()
    gap = teacher_right.mean() - np.where(escalate, teacher_right, student_right).mean()
    assert gap <= 0.01


def test_auto_keeps_a_closed_form_signal_where_confidence_already_tells() -> None:
    report = calibrate(synthetic_predictions(1500, 2, length_matters=False), "max_quality_loss", 1.0)
    assert report.calibration.rule_choice is not None
    if report.signal is Signal.LEARNED:  # allowed only where it was strictly cheaper on the same texts
        costs = report.calibration.rule_choice.dollars_per_1000
        closed = [c for name, c in costs.items() if not name.startswith("learned") and c is not None]
        kept = costs[report.calibration.rule_choice.kept]
        assert kept is not None and kept < min(closed)
    else:
        assert report.calibration.rule is None


def test_signals_only_and_too_few_texts_for_a_learned_rule() -> None:
    small = synthetic_predictions(120, 3, length_matters=True)
    assert calibrate(small, "max_quality_loss", 5.0).calibration.rule_choice is None  # auto: closed-form only
    with pytest.raises(ValueError, match="at least 200"):
        calibrate(small, "max_quality_loss", 5.0, rule="learned")
    signals = calibrate(synthetic_predictions(600, 3, length_matters=True), "max_quality_loss", 1.0, rule="signals")
    assert signals.calibration.rule is None and signals.calibration.rule_choice is None


def test_point_estimate_promises_more_than_the_bound() -> None:
    data = synthetic_predictions(800, 4, length_matters=False)
    point = calibrate(data, "max_quality_loss", 1.0, rule="signals", confidence_level=None)
    bounded = calibrate(data, "max_quality_loss", 1.0, rule="signals")
    assert point.calibration.confidence is None and bounded.calibration.confidence == 0.9
    assert bounded.expected.chosen.escalation_rate >= point.expected.chosen.escalation_rate
    # the bounded report says what the same rule would escalate on the point estimate: what the bound costs
    one = (Signal.MAX_PROB,)
    point = calibrate(data, "max_quality_loss", 1.0, rule="signals", signals=one, confidence_level=None)
    bounded = calibrate(data, "max_quality_loss", 1.0, rule="signals", signals=one)
    assert bounded.point_estimate_escalation == point.expected.chosen.escalation_rate
    assert bounded.point_estimate_escalation < bounded.expected.chosen.escalation_rate
    assert point.point_estimate_escalation is None


def test_a_learned_rule_travels_in_the_manifest_to_the_gateway_policy(tiny_pair: TinyPair, tmp_path: Path) -> None:
    student = Path(shutil.copytree(tiny_pair.student, tmp_path / "student"))
    report = calibrate(synthetic_predictions(600, 5, length_matters=True), "max_quality_loss", 1.0, rule="learned")
    write_calibration(student, report)
    manifest = read_manifest(student)
    assert manifest.calibration is not None and manifest.calibration.rule is not None
    in_force = policy_in_force(CascadeSettings(), manifest.calibration, manifest.temperature)
    assert in_force.policy.signal is Signal.LEARNED and in_force.source == "calibration"
    assert in_force.policy.rule == manifest.calibration.rule.to_rule()
    with pytest.raises(ConfigError, match="learned"):
        policy_in_force(CascadeSettings(signal=Signal.LEARNED), None, 1.0)
    resolve_model(str(student))  # checksums still valid


def test_calibrating_on_a_models_own_early_stopping_file_is_flagged(tiny_pair: TinyPair, tmp_path: Path) -> None:
    student = Path(shutil.copytree(tiny_pair.student, tmp_path / "student"))
    manifest_path = student / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["training"]["dev"] = {"source": str(tiny_pair.data), "rows": 6, "labels": 2}
    manifest_path.write_text(json.dumps(manifest))
    student_ref = resolve_model(str(student))
    warnings = seen_in_training(tiny_pair.data, resolve_model(str(tiny_pair.teacher)), student_ref)
    assert len(warnings) == 1 and "early-stopped" in warnings[0] and "cascade split" in warnings[0]
    assert seen_in_training(tmp_path / "other.jsonl", student_ref) == []
    manifest["training"]["transfer"] = {"source": str(tmp_path / "logged.jsonl"), "rows": 6}
    manifest_path.write_text(json.dumps(manifest))
    warnings = seen_in_training(tmp_path / "logged.jsonl", resolve_model(str(student)))
    assert len(warnings) == 1 and "trained" in warnings[0]  # a transfer file trained the student too

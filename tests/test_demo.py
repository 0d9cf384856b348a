"""The embedded demo pair builds offline from the packaged MiniLM and answers sensibly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from distill.data import read_jsonl
from distill.demo import DEMO_DATA, demo_pair_location, ensure_demo_pair
from serving.backends import load_backend
from serving.config import CascadeSettings
from serving.model_ref import resolve_model
from serving.policy import policy_in_force


@pytest.mark.slow
def test_demo_pair_builds_caches_and_answers(tmp_path: Path) -> None:
    pair = ensure_demo_pair(tmp_path)
    assert pair == demo_pair_location(tmp_path)
    teacher, student = resolve_model(str(pair.teacher)), resolve_model(str(pair.student))
    assert teacher.labels == student.labels and student.manifest is not None
    assert student.manifest.parent == teacher.version and student.has_onnx
    calibration = student.manifest.calibration
    assert calibration is not None
    assert calibration.target.model_dump() == {"kind": "escalation_share", "value": 0.1}
    assert 0.05 <= calibration.expected_escalation_rate <= 0.1  # the least confident tenth of dev, from below
    assert teacher.temperature != 1.0  # fitted on dev too: both roles report calibrated confidences

    # The rule the gateway serves with keeps in-domain texts on the student and escalates gibberish.
    policy = policy_in_force(CascadeSettings(), calibration, student.temperature).policy
    verdict = policy.judge(load_backend(student).logits(["I lost my card", "asdf qwerty"]))
    assert verdict.escalate.tolist() == [False, True], verdict.confidence

    dev = read_jsonl(DEMO_DATA / "dev.jsonl")
    for ref in (teacher, student):
        predictions = np.argmax(load_backend(ref).logits(dev.texts), axis=1)
        accuracy = float(np.mean([ref.labels[p] == gold for p, gold in zip(predictions, dev.labels, strict=True)]))
        assert accuracy >= 0.85, f"{ref.version} dev accuracy {accuracy:.3f}"

    mtime = (pair.student / "manifest.json").stat().st_mtime
    assert ensure_demo_pair(tmp_path) == pair  # second call: from the cache, nothing rebuilt
    assert (pair.student / "manifest.json").stat().st_mtime == mtime

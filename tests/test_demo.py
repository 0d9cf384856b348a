"""The embedded demo pair builds offline from the packaged MiniLM and answers sensibly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from distill.data import read_jsonl
from distill.demo import DEMO_DATA, demo_pair_location, ensure_demo_pair
from serving.backends import load_backend
from serving.model_ref import resolve_model


@pytest.mark.slow
def test_demo_pair_builds_caches_and_answers(tmp_path: Path) -> None:
    pair = ensure_demo_pair(tmp_path)
    assert pair == demo_pair_location(tmp_path)
    teacher, student = resolve_model(str(pair.teacher)), resolve_model(str(pair.student))
    assert teacher.labels == student.labels and student.manifest is not None
    assert student.manifest.parent == teacher.version and student.has_onnx
    assert student.manifest.calibration is not None
    assert student.manifest.calibration.target.model_dump() == {"kind": "max_quality_loss", "value": 0.0}

    dev = read_jsonl(DEMO_DATA / "dev.jsonl")
    for ref in (teacher, student):
        predictions = np.argmax(load_backend(ref).logits(dev.texts), axis=1)
        accuracy = float(np.mean([ref.labels[p] == gold for p, gold in zip(predictions, dev.labels, strict=True)]))
        assert accuracy >= 0.85, f"{ref.version} dev accuracy {accuracy:.3f}"

    mtime = (pair.student / "manifest.json").stat().st_mtime
    assert ensure_demo_pair(tmp_path) == pair  # second call: from the cache, nothing rebuilt
    assert (pair.student / "manifest.json").stat().st_mtime == mtime

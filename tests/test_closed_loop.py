"""The loop closed end to end, small: drift shows, the teacher labels it, redistill learns it, the
gateway swaps it in under continuous load with no failed request, and the figures come back.

A keyword teacher knows three intents; the student was distilled on two ("greeting" held out).
Traffic with greetings raises escalation and disagreement and moves the exported PSI; one
``redistill`` run on the logged teacher answers (plus the student's base data) passes the gate; the
registry watcher of ``cascade serve`` swaps it in while requests keep coming; fresh traffic of the
same kind then escalates and disagrees about as little as before the drift. A candidate trained on
shuffled teacher answers is rejected and never served.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from benchmarks.closed_loop import ContinuousLoad, phase, teacher_labels, wait_for_log
from distill.build import BuildOptions, distill_student, finetune_teacher
from distill.calibrate import calibrate, write_calibration
from distill.predictions import predict
from distill.redistill import RedistillReport, RedistillSettings, run_redistill
from distill.training import TrainSettings
from router.signals import Signal
from serving.config import parse_config
from serving.constants import KEEP_TEXT_FOR_REDISTILL as OPT_IN_TEXT
from serving.model_ref import resolve_model
from serving.registry import Registry
from serving.traffic_log import read_traffic_log
from tests.builders import KEYWORDS, ambiguous_texts, build_tiny_model, keyword_texts, write_rows

pytestmark = pytest.mark.slow  # the whole loop: Ray Serve, training, a swap under load

LOOP_RESILIENCE = {"student_timeout_s": 60, "teacher_timeout_s": 60, "request_timeout_s": 120}

APP = "cascade-loop"
KNOWN = ["balance", "card"]
MAX_LENGTH = 16
TRAIN = TrainSettings(epochs=15, learning_rate=3e-3, batch_size=16, patience=99)


@dataclass(frozen=True)
class Loop:
    registry: Registry
    teacher: Path
    base_train: Path
    log: Path
    config: dict[str, Any]
    url: str
    metrics_url: str


def _mixed(seed: int, known: int, new: int) -> list[str]:
    """Traffic like the calibration set (``known`` texts per known intent, half as many mixing them)
    plus ``new`` greetings, interleaved in a stable order."""
    texts = [t for label in KNOWN for t in keyword_texts(label, known, seed)]
    texts += ambiguous_texts(KNOWN[0], KNOWN[1], known // 2, seed) + keyword_texts("greeting", new, seed)
    return sorted(texts, key=lambda t: hash((seed, t)) % 10_007)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Registry, Path, Path]:
    """Teacher on all three intents; student distilled and calibrated on the known two; both promoted."""
    root = tmp_path_factory.mktemp("loop")
    every = [{"text": t, "label": label} for label in KEYWORDS for t in keyword_texts(label, 100, seed=0)]
    known = [row for row in every if row["label"] in KNOWN]
    options = {"max_length": MAX_LENGTH, "overwrite": True, "train": TRAIN}
    base = build_tiny_model(root / "base", layers=2, seed=1, role="teacher", onnx=False)
    finetune_teacher(
        write_rows(root / "all.jsonl", every),
        root / "teacher",
        BuildOptions(name="kw-teacher", onnx=False, **options),  # type: ignore[arg-type]
        base_model=str(base),
    )
    base_train = write_rows(root / "known.jsonl", known)
    distill_student(
        root / "teacher",
        base_train,
        root / "student",
        BuildOptions(name="kw-student", **options),  # type: ignore[arg-type]
        shape="bag_of_embeddings",
        bag_hidden_size=32,
    )
    # Calibration traffic: the known intents, and some texts that mix them, labelled by the teacher.
    # (On unambiguous texts alone the student never errs, and the fitted temperature sharpens it
    # until every answer, greetings included, looks certain.)
    held_back = [{"text": t, "label": label} for label in KNOWN for t in keyword_texts(label, 60, seed=1)]
    mixed = ambiguous_texts(KNOWN[0], KNOWN[1], 30, seed=1)
    teacher_says = teacher_labels(str(root / "teacher"), mixed, max_length=MAX_LENGTH)
    held_back += [{"text": t, "label": teacher_says[t]} for t in mixed]
    predictions = predict(
        resolve_model(str(root / "teacher")),
        resolve_model(str(root / "student")),
        write_rows(root / "calibration.jsonl", held_back),
        max_length=MAX_LENGTH,
    )
    write_calibration(root / "student", calibrate(predictions, "max_quality_loss", 1.0, signals=(Signal.MAX_PROB,)))
    registry = Registry(root / "registry")
    for folder in ("teacher", "student"):
        registry.add(root / folder)
    registry.promote("teacher", "kw-teacher", "1")
    registry.promote("student", "kw-student", "1")
    return registry, root / "teacher", base_train


@pytest.fixture(scope="module")
def loop(
    models: tuple[Registry, Path, Path], serve_port: int, ray_session: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Loop]:
    """The gateway on the registry, logging what the teacher answers, and the registry watcher running."""
    from ray import serve

    from serving.application import build_app

    registry, teacher, base_train = models
    log = tmp_path_factory.mktemp("traffic")

    def role(model: str) -> dict[str, Any]:
        return {
            "model": model,
            "threads": 1,
            "max_length": 32,
            "batching": {"max_batch_size": 8, "batch_wait_timeout_s": 0.002},
            "deployment": {"num_cpus": 0.5, "max_ongoing_requests": 32, "max_queued_requests": 256},
        }

    config = {
        "http": {"host": "127.0.0.1", "port": serve_port},
        "limits": {"max_inputs": 32},
        # the rule stays fixed across the swap, so escalation before and after compare like with like
        "cascade": {"signal": "max_prob", "threshold": 0.9},
        "shadow": {"rate": 1.0, "max_in_flight": 64},
        "drift": {"window": 100, "min_samples": 50},
        "traffic_log": {"path": str(log), "flush_interval_s": 0.3, "keep_text": OPT_IN_TEXT},
        # Training runs on the same 2 cores as serving here: with the default timeouts, teacher calls
        # starved by it are answered degraded and never logged, and the loop would learn from fewer
        # labels than it sent. This test is about the loop, not about timeouts: wait for every answer.
        "resilience": LOOP_RESILIENCE,
        "reload": {"poll_s": 0.3},
        "student": role(f"registry:{registry.root}/student"),
        "teacher": role(f"registry:{registry.root}/teacher"),
    }
    parsed = parse_config(config)
    serve.run(build_app(parsed), name=APP, route_prefix="/")  # it follows the registry by itself
    try:
        yield Loop(
            registry,
            teacher,
            base_train,
            log,
            config,
            f"http://127.0.0.1:{serve_port}",
            f"http://127.0.0.1:{ray_session}/metrics",
        )
    finally:
        serve.delete(APP)


def _redistill(loop: Loop, state: Path, **overrides: Any) -> RedistillReport:
    settings = {
        "registry": loop.registry.root,
        "traffic_log": loop.log,
        "state": state,
        "base_train": loop.base_train,
        "min_new_labels": 100,
        "epochs": TRAIN.epochs,
        "learning_rate": TRAIN.learning_rate,
        "max_length": MAX_LENGTH,
        "threads": 1,
        "max_quality_loss": 1.0,
        "shadow_rate": 1.0,  # the gateway's: every text the student answered was shadowed
        **overrides,
    }
    return run_redistill(RedistillSettings(**settings), log=lambda _: None)


def test_drift_is_learned_from_the_teachers_answers_and_swapped_in_under_load(loop: Loop, tmp_path: Path) -> None:
    pre_texts, drift_texts, post_texts = _mixed(10, 60, 0), _mixed(11, 40, 80), _mixed(12, 40, 80)
    teacher = teacher_labels(str(loop.teacher), pre_texts + drift_texts + post_texts, max_length=32)
    measure = {"metrics_url": loop.metrics_url, "application": APP, "metrics_deadline_s": 120.0}

    pre = phase("pre-drift", loop.url, pre_texts, teacher, **measure)  # type: ignore[arg-type]
    drift = phase("drift", loop.url, drift_texts, teacher, **measure)  # type: ignore[arg-type]
    assert pre["failed"] == drift["failed"] == 0
    assert pre["student_versions"] == drift["student_versions"] == ["kw-student:1"]
    # Drift shows: more escalations, less agreement, the exported PSI and shadow disagreement up.
    assert drift["escalation_rate"] > pre["escalation_rate"] + 0.2, (pre, drift)
    assert drift["agreement"] < pre["agreement"] - 0.2, (pre, drift)
    assert drift["exported"]["psi"] > 2 * pre["exported"]["psi"], (pre, drift)
    assert drift["exported"]["shadow_disagreement"] > pre["exported"]["shadow_disagreement"] + 0.1, (pre, drift)

    # Every text the teacher answered (escalated, or shadowed at rate 1) is in the log.
    wait_for_log(lambda: read_traffic_log(loop.log)[0].num_rows, len(pre_texts) + len(drift_texts), settle_s=1.0)

    with ContinuousLoad(loop.url, drift_texts, workers=2) as load:
        report = _redistill(loop, tmp_path / "state")
        assert report.outcome == "promoted", report.why
        assert report.reasons and "new teacher labels" in report.reasons[0]
        load.wait_for("kw-student:2", deadline_s=60)
        load.wait_for_requests(20)  # some traffic on the new student before the load stops
    swap = load.summary()
    assert swap["failed"] == 0, swap
    assert set(swap["student_versions"]) == {"kw-student:1", "kw-student:2"}, swap

    post = phase("post-swap", loop.url, post_texts, teacher, **measure)  # type: ignore[arg-type]
    assert post["failed"] == 0 and post["student_versions"] == ["kw-student:2"]
    # Fresh traffic of the drifted kind: escalation back near its pre-drift level, agreement recovered.
    assert post["escalation_rate"] <= max(1.2 * pre["escalation_rate"], pre["escalation_rate"] + 0.05), (pre, post)
    assert post["agreement"] >= pre["agreement"] - 0.05, (pre, post)
    assert post["exported"]["shadow_disagreement"] < drift["exported"]["shadow_disagreement"] / 2, (drift, post)

    # A candidate trained on shuffled teacher answers: rejected, never added, never served.
    with ContinuousLoad(loop.url, post_texts, workers=1) as load:
        worse = _redistill(loop, tmp_path / "state", force=True, shuffle_training_labels=True)
        load.wait_for_requests(20)
    assert worse.outcome == "rejected", worse.why
    assert [e.version for e in loop.registry.entries() if e.name == "kw-student"] == ["1", "2"]
    after = load.summary()
    assert after["failed"] == 0 and set(after["student_versions"]) == {"kw-student:2"}, after

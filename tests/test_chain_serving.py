"""A chain of three served: student → middle → teacher, its rule, its failures, its metrics and its config."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest

from distill.calibrate import calibrate
from distill.chain import ChainData, StageOutputs, StageRule, stage_scores
from router import CascadePolicy, Signal
from router.deferral import BASE_FEATURES, CHAIN_FEATURES, deferral_features, fit_deferral_rule
from router.signals import softmax
from router.stages import StagePolicy, stage_score
from serving import metrics as m
from serving.artifact import Calibration
from serving.cascade import CascadeOutcome, run_cascade
from serving.config import CascadeSettings, parse_config
from serving.errors import ConfigError, ModelTimeout, ModelUnavailable
from serving.metrics import RequestUsage
from serving.policy import policy_in_force
from tests.builders import as_chain, synthetic_predictions
from tests.recorded_metrics import recording_metrics

LABELS = ["a", "b"]
SURE_A = [4.0, -4.0]  # max prob ~1, answers a
SURE_B = [-4.0, 4.0]
UNSURE_A = [0.1, 0.0]  # max prob ~0.52, answers a: below 0.7
TEXTS = ["w", "x", "y", "z"]

LogitsCall = Callable[[list[str]], Awaitable[np.ndarray]]


class Model:
    """A model that answers fixed logits per text, and remembers which texts it was asked."""

    def __init__(self, answers: dict[str, list[float]] | Exception) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def __call__(self, texts: list[str]) -> np.ndarray:
        self.asked += texts
        if isinstance(self.answers, Exception):
            raise self.answers
        return np.array([self.answers[text] for text in texts], dtype=np.float32)


def _chain(student: Model, middle: Model, teacher: Model, *, degrade: bool = True) -> CascadeOutcome:
    return asyncio.run(
        run_cascade(
            TEXTS,
            "auto",
            policy=CascadePolicy(0.7, Signal.MAX_PROB),
            labels=LABELS,
            teacher_temperature=1.0,
            student=student,
            teacher=teacher,
            degrade=degrade,
            middle=middle,
            middle_policy=StagePolicy("agreement", 0.7),
        )
    )


STUDENT = Model({"w": SURE_A, "x": UNSURE_A, "y": UNSURE_A, "z": UNSURE_A})
MIDDLE = {"x": SURE_A, "y": SURE_B, "z": UNSURE_A}
"""x: agrees and is sure (kept); y: contradicts the student (escalated); z: agrees but unsure (escalated)."""
TEACHER = {"y": SURE_B, "z": SURE_B}


def test_each_stage_answers_what_the_one_before_escalated() -> None:
    student, middle, teacher = Model(STUDENT.answers), Model(MIDDLE), Model(TEACHER)
    outcome = _chain(student, middle, teacher)
    assert (student.asked, middle.asked, teacher.asked) == (TEXTS, ["x", "y", "z"], ["y", "z"])
    assert [r.served_by for r in outcome.results] == ["student", "middle", "teacher", "teacher"]
    assert [r.label for r in outcome.results] == ["a", "a", "b", "b"]
    assert [r.escalated for r in outcome.results] == [False, True, True, True]
    assert outcome.middle_rows == (1, 2, 3) and outcome.teacher_rows == [2, 3]
    assert outcome.middle_confidence is not None
    assert outcome.middle_confidence[1] == 0.0  # disagreement scores 0 under the agreement rule
    assert outcome.results[1].confidence == pytest.approx(outcome.middle_confidence[0])
    assert not any(r.degraded for r in outcome.results)


def test_a_failed_middle_model_hands_its_texts_to_the_teacher() -> None:
    teacher = Model({"x": SURE_B, "y": SURE_B, "z": SURE_B})
    outcome = _chain(Model(STUDENT.answers), Model(ModelUnavailable("down")), teacher)
    assert teacher.asked == ["x", "y", "z"]
    assert [r.served_by for r in outcome.results] == ["student", "teacher", "teacher", "teacher"]
    assert [r.degraded_reason for r in outcome.results] == [None, *["middle_unavailable"] * 3]
    assert outcome.degraded_rows == (1, 2, 3) and outcome.middle_rows == ()
    with pytest.raises(ModelUnavailable):
        _chain(Model(STUDENT.answers), Model(ModelUnavailable("down")), teacher, degrade=False)


def test_when_the_teacher_fails_the_middle_models_answer_stands() -> None:
    outcome = _chain(Model(STUDENT.answers), Model(MIDDLE), Model(ModelTimeout("slow")))
    assert [r.served_by for r in outcome.results] == ["student", "middle", "middle", "middle"]
    assert [r.label for r in outcome.results] == ["a", "a", "b", "a"]  # the middle model's answers
    assert [r.degraded_reason for r in outcome.results] == [None, None, "teacher_timeout", "teacher_timeout"]
    assert outcome.teacher_rows == [] and outcome.degraded_rows == (2, 3)


def test_the_gateway_scores_a_stage_exactly_as_calibration_did() -> None:
    """``router.stages`` serves; ``distill.chain`` calibrates: the same scores for the same outputs."""
    rng = np.random.default_rng(0)
    n = 300
    student_logits, middle_logits = rng.normal(size=(n, 4)) * 2, rng.normal(size=(n, 4)) * 2
    lengths = rng.integers(5, 80, n).astype(float)
    gold = rng.integers(0, 4, n)
    names = BASE_FEATURES + CHAIN_FEATURES
    features = deferral_features(softmax(middle_logits, 1.3), lengths, softmax(student_logits, 0.8))
    rule = fit_deferral_rule(features, middle_logits.argmax(axis=1) == gold, names)
    data = ChainData(
        (StageOutputs("s", student_logits, 0.001), StageOutputs("m", middle_logits, 0.002)),
        StageOutputs("t", rng.normal(size=(n, 4)), 0.01),
        gold,
        lengths,
    )
    for kind, learned in (("max_prob", None), ("agreement", None), ("learned", rule)):
        offline = stage_scores(data, (StageRule("max_prob", 0.8), StageRule(kind, 1.3, learned)))[1]  # type: ignore[arg-type]
        live = StagePolicy(kind, 0.5, 1.3, learned).judge(  # type: ignore[arg-type]
            middle_logits, softmax(student_logits, 0.8), lengths
        )
        np.testing.assert_allclose(live.confidence, offline)
        assert (live.escalate == (offline < 0.5)).all()


def test_stage_policy_refuses_what_cannot_work() -> None:
    with pytest.raises(ValueError, match="kind must be one of max_prob, agreement, learned"):
        StagePolicy("vote", 0.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs a rule"):
        StagePolicy("learned", 0.5)
    with pytest.raises(ValueError, match="threshold"):
        StagePolicy("max_prob", -1.0)
    with pytest.raises(ValueError, match="no previous stage"):
        stage_score("agreement", np.ones((1, 2)) / 2, [3], None)


def _calibration(middle_model: str | None) -> Calibration:
    """A stored calibration, as ``cascade calibrate`` would write it (a chain's when ``middle_model``)."""
    calibration = calibrate(synthetic_predictions(300, 1, length_matters=False), "max_escalation", 0.3).calibration
    if middle_model is None:
        return calibration
    return as_chain(calibration, middle_model, threshold=0.6, temperature=1.2)


def test_the_middle_stage_comes_from_the_calibration_of_the_very_model_served() -> None:
    settings = CascadeSettings()
    served = policy_in_force(settings, _calibration("tiny-middle:1"), 1.0, "tiny-middle:1")
    assert served.middle == StagePolicy("agreement", 0.6, 1.2)
    assert policy_in_force(settings, _calibration(None), 1.0).middle is None
    with pytest.raises(ConfigError, match="calibrated with tiny-middle:1, the config serves tiny-middle:2"):
        policy_in_force(settings, _calibration("tiny-middle:1"), 1.0, "tiny-middle:2")
    with pytest.raises(ConfigError, match="not a chain's; run cascade calibrate --middle"):
        policy_in_force(settings, _calibration(None), 1.0, "tiny-middle:1")
    with pytest.raises(ConfigError, match="calibrated as a chain through tiny-middle:1; add a middle section"):
        policy_in_force(settings, _calibration("tiny-middle:1"), 1.0)


def test_config_serves_a_middle_role_only_on_its_own_replicas() -> None:
    base: dict[str, Any] = {"student": {"model": "s"}, "teacher": {"model": "t"}}
    assert parse_config(base).roles == ("student", "teacher")
    assert parse_config({**base, "middle": {"model": "m"}}).roles == ("student", "middle", "teacher")
    with pytest.raises(ConfigError, match=r"middle\.colocate must be false"):
        parse_config({**base, "middle": {"model": "m", "colocate": True}})


def test_metrics_count_cost_and_confidence_per_stage() -> None:
    metrics, made = recording_metrics()
    metrics.configure(
        student_dollars_per_hour=3600.0,
        middle_dollars_per_hour=7200.0,
        teacher_dollars_per_hour=36000.0,
        reference=None,
        window=10,
        min_samples=1,
    )
    metrics.teacher_seconds_per_text = 0.01
    metrics.record_request(
        served_by=["student", "middle", "teacher"],
        path="escalation",
        duration_s=0.05,
        student_confidence=np.array([0.9, 0.4, 0.3]),
        usage=RequestUsage(student_seconds=0.003, middle_seconds=0.002, teacher_seconds=0.01),
        middle_confidence=np.array([0.8, 0.2]),
    )
    served = made[m.REQUESTS].values
    assert {key[0][1]: value for key, value in served.items()} == {"student": 1, "middle": 1, "teacher": 1}
    cost = made[m.COST].values
    assert cost[(("role", "middle"),)] == pytest.approx(0.004)
    assert cost[(("role", "teacher"),)] == pytest.approx(0.1)
    assert made[m.ESCALATIONS].values == {(("reason", "escalation"),): 1}  # texts the teacher answered
    observed = made[m.STUDENT_CONFIDENCE].observed
    assert observed[(("stage", "student"),)] == pytest.approx([0.9, 0.4, 0.3])
    assert observed[(("stage", "middle"),)] == pytest.approx([0.8, 0.2])


def test_a_middle_stage_that_keeps_nothing_is_not_called() -> None:
    """Calibration may find that only the teacher meets the target: then the middle model is skipped."""
    middle, teacher = Model(MIDDLE), Model({"x": SURE_B, "y": SURE_B, "z": SURE_B})
    outcome = asyncio.run(
        run_cascade(
            TEXTS,
            "auto",
            policy=CascadePolicy(0.7, Signal.MAX_PROB),
            labels=LABELS,
            teacher_temperature=1.0,
            student=Model(STUDENT.answers),
            teacher=teacher,
            middle=middle,
            middle_policy=StagePolicy("max_prob", 2.0),
        )
    )
    assert middle.asked == [] and teacher.asked == ["x", "y", "z"]
    assert [r.served_by for r in outcome.results] == ["student", "teacher", "teacher", "teacher"]

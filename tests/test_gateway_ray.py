"""The Ray Serve application in-process on the session's local Ray: live reconfiguration and batching."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from serving.config import parse_config
from tests.builders import TEXTS, TinyPair
from tests.gateway_helpers import gateway_config

pytestmark = pytest.mark.slow  # Ray Serve on the session's Ray

APP = "cascade-test"


@pytest.fixture(scope="module")
def gateway(serve_port: int, tiny_pair: TinyPair) -> Iterator[tuple[str, dict[str, Any]]]:
    from ray import serve

    from serving.application import build_app

    port = serve_port
    config = gateway_config(tiny_pair, threshold=0.0, port=port, max_batch_size=3)
    serve.run(build_app(parse_config(config)), name=APP, route_prefix="/")
    try:
        yield f"http://127.0.0.1:{port}", config
    finally:
        serve.delete(APP)


def _classify(url: str, payload: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(f"{url}/v1/classify", json=payload, timeout=60)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_request_larger_than_a_batch_is_chunked_and_kept_in_order(
    gateway: tuple[str, dict[str, Any]],
) -> None:
    url, _ = gateway
    texts = [f"{TEXTS[i % len(TEXTS)]} #{i}" for i in range(8)]  # 8 texts, batches of 3
    together = _classify(url, {"inputs": texts, "route": "student"})["results"]
    one_by_one = [_classify(url, {"inputs": t, "route": "student"})["results"][0] for t in texts]
    assert [r["label"] for r in together] == [r["label"] for r in one_by_one]
    for a, b in zip(together, one_by_one, strict=True):
        assert a["confidence"] == pytest.approx(b["confidence"], abs=1e-5)


def test_threshold_change_applies_live(gateway: tuple[str, dict[str, Any]]) -> None:
    from ray import serve

    from serving.application import build_app

    url, config = gateway
    assert {r["served_by"] for r in _classify(url, {"inputs": TEXTS})["results"]} == {"student"}
    replicas_before = httpx.get(f"{url}/v1/models").json()["roles"]
    escalate_all = {**config, "cascade": {"signal": "margin", "threshold": 1.5}}
    serve.run(build_app(parse_config(escalate_all)), name=APP, route_prefix="/")
    models = httpx.get(f"{url}/v1/models").json()
    assert models["cascade"] == {
        "signal": "margin",
        "threshold": 1.5,
        "temperature": 1.0,
        "learned_rule": None,
        "source": "config",  # the tiny student is uncalibrated: nothing to expect, the config decides
        "expected_escalation_rate": None,
        "stages": ["student", "teacher"],
        "middle": None,
    }
    assert models["roles"] == replicas_before
    results = _classify(url, {"inputs": TEXTS})["results"]
    assert {r["served_by"] for r in results} == {"teacher"} and all(r["escalated"] for r in results)


def test_gateway_serves_with_the_students_calibration(
    gateway: tuple[str, dict[str, Any]], tiny_pair: TinyPair, tmp_path_factory: pytest.TempPathFactory
) -> None:
    import shutil

    from ray import serve

    from distill.calibrate import calibrate_artifacts
    from serving.application import build_app
    from serving.artifact import read_manifest

    url, config = gateway
    student = shutil.copytree(tiny_pair.student, tmp_path_factory.mktemp("calibrated") / "student")
    calibrate_artifacts(str(tiny_pair.teacher), str(student), tiny_pair.data, "max_escalation", 0.5)
    manifest = read_manifest(student)
    uncalibrated_config = {**config, "cascade": {}, "student": {**config["student"], "model": str(student)}}
    serve.run(build_app(parse_config(uncalibrated_config)), name=APP, route_prefix="/")
    cascade = httpx.get(f"{url}/v1/models").json()["cascade"]
    assert manifest.calibration is not None
    assert cascade == {
        "signal": manifest.calibration.signal,
        "threshold": manifest.calibration.threshold,
        "temperature": manifest.temperature,
        "learned_rule": None,
        "source": "calibration",
        "expected_escalation_rate": manifest.calibration.expected_escalation_rate,
        "stages": ["student", "teacher"],
        "middle": None,
    }
    assert manifest.temperature != 1.0


def test_gateway_serves_a_learned_deferral_rule_from_the_manifest(
    gateway: tuple[str, dict[str, Any]], tiny_pair: TinyPair, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A student calibrated with a learned rule: the gateway escalates exactly where the rule says so."""
    import shutil

    import numpy as np
    from ray import serve

    from distill.calibrate import calibrate, policy_from, write_calibration
    from serving.application import build_app
    from serving.artifact import read_manifest
    from serving.backends import load_backend
    from serving.model_ref import resolve_model
    from tests.builders import synthetic_predictions

    url, config = gateway
    student = shutil.copytree(tiny_pair.student, tmp_path_factory.mktemp("learned") / "student")
    # The rule's features do not depend on the number of classes: fitted on synthetic outputs, it scores any student.
    report = calibrate(synthetic_predictions(600, 5, length_matters=True), "max_quality_loss", 1.0, rule="learned")
    write_calibration(student, report)
    manifest = read_manifest(student)
    assert manifest.calibration is not None and manifest.calibration.rule is not None
    offline = policy_from(manifest.calibration, manifest.temperature)
    logits = load_backend(resolve_model(str(student))).logits(TEXTS)
    scores = offline.judge(logits, [len(t) for t in TEXTS]).confidence
    threshold = float(np.median(scores))  # the config moves the threshold; the rule stays the calibrated one
    learned_config = {
        **config,
        "cascade": {"threshold": threshold},
        "student": {**config["student"], "model": str(student)},
    }
    serve.run(build_app(parse_config(learned_config)), name=APP, route_prefix="/")
    cascade = httpx.get(f"{url}/v1/models").json()["cascade"]
    assert cascade["signal"] == "learned" and cascade["threshold"] == threshold
    rule = manifest.calibration.rule
    assert cascade["learned_rule"] == {"target": rule.target, "features": rule.feature_names}
    results = _classify(url, {"inputs": TEXTS})["results"]
    assert [r["escalated"] for r in results] == (scores < threshold).tolist()
    assert 0 < sum(r["escalated"] for r in results) < len(TEXTS)
    for result, score in zip(results, scores, strict=True):
        if not result["escalated"]:
            assert result["confidence"] == pytest.approx(score, abs=1e-5)


def _widest_gap(scores: Any, at_least_below: int = 1) -> float:
    """A threshold in the widest gap between two scores, with ``at_least_below`` scores under it and one above:
    batching's float noise cannot move a text across it."""
    ordered = sorted(float(x) for x in scores)
    gaps = [(b - a, (a + b) / 2) for a, b in itertools.pairwise(ordered)]
    return max(gaps[at_least_below - 1 :])[1]


def test_gateway_serves_a_chain_of_three_as_calibrated(
    gateway: tuple[str, dict[str, Any]], tiny_pair: TinyPair, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """student → middle → teacher: each text is answered by the stage the offline rules name, and said so."""
    import shutil

    import numpy as np
    from ray import serve

    from distill.calibrate import calibrate
    from router import CascadePolicy, Signal
    from router.stages import StagePolicy
    from serving.application import build_app
    from serving.artifact import read_manifest, write_manifest
    from serving.backends import load_backend
    from serving.model_ref import resolve_model
    from tests.builders import as_chain, build_tiny_model, synthetic_predictions

    url, config = gateway
    root = tmp_path_factory.mktemp("chain")
    student = shutil.copytree(tiny_pair.student, root / "student")
    middle = build_tiny_model(root / "middle", layers=1, seed=3, role="student", onnx=False)
    middle_ref = resolve_model(str(middle))
    texts = [f"{TEXTS[i % len(TEXTS)]} {'please ' * (i // len(TEXTS))}".strip() for i in range(8)]
    student_logits = load_backend(resolve_model(str(student))).logits(texts)
    middle_logits = load_backend(middle_ref).logits(texts)

    stored = calibrate(synthetic_predictions(300, 2, length_matters=False), "max_escalation", 0.5, rule="signals")
    # Random tiny models are nearly uniform (logits within 0.01): a small temperature spreads their scores.
    sharp = 0.01
    student_verdict = CascadePolicy(0.0, Signal.MAX_PROB, sharp).judge(student_logits)
    threshold = _widest_gap(student_verdict.confidence, at_least_below=3)  # the config's τ: some texts go on
    escalated = np.flatnonzero(student_verdict.confidence < threshold)
    # The middle stage keeps the answers it is surest of among those: its threshold splits them.
    middle_scores = StagePolicy("max_prob", 0.0, sharp).judge(
        middle_logits[escalated], student_verdict.probabilities[escalated], [len(texts[i]) for i in escalated]
    )
    middle_threshold = _widest_gap(middle_scores.confidence)
    calibration = as_chain(
        stored.calibration, middle_ref.version, kind="max_prob", threshold=middle_threshold, temperature=sharp
    )
    manifest = read_manifest(student)
    write_manifest(student, manifest.model_copy(update={"calibration": calibration}))

    expected = ["student"] * len(texts)
    for position, row in enumerate(escalated):
        expected[row] = "middle" if middle_scores.confidence[position] >= middle_threshold else "teacher"
    assert {"student", "middle", "teacher"} <= set(expected)

    chain_config = {
        **config,
        "cascade": {"signal": "max_prob", "threshold": threshold, "temperature": sharp},
        "student": {**config["student"], "model": str(student)},
        "middle": {**config["student"], "model": str(middle)},
    }
    serve.run(build_app(parse_config(chain_config)), name=APP, route_prefix="/")
    try:
        described = httpx.get(f"{url}/v1/models").json()
        assert described["cascade"]["stages"] == ["student", "middle", "teacher"]
        assert described["cascade"]["middle"] == {
            "kind": "max_prob",
            "threshold": middle_threshold,
            "temperature": sharp,
            "learned_rule": None,
        }
        assert described["roles"]["middle"]["model"] == "middle"
        body = _classify(url, {"inputs": texts})
        assert [r["served_by"] for r in body["results"]] == expected
        assert [r["escalated"] for r in body["results"]] == [who != "student" for who in expected]
        assert body["model_versions"]["middle"] == middle_ref.version
    finally:
        serve.run(build_app(parse_config(config)), name=APP, route_prefix="/")


def test_api_keys_rotation_and_quota_apply_live_over_http(
    gateway: tuple[str, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    import time

    import yaml
    from ray import serve

    from serving.application import build_app
    from serving.auth import hash_key

    url, config = gateway
    keys_file = tmp_path_factory.mktemp("keys") / "keys.yaml"

    def write_keys(*entries: tuple[str, str]) -> None:
        keys = [{"name": name, "sha256": hash_key(secret), "requests_per_minute": 3} for name, secret in entries]
        keys_file.write_text(yaml.safe_dump({"keys": keys}), encoding="utf-8")

    def post(secret: str | None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        return httpx.post(f"{url}/v1/classify", json={"inputs": "hi", "route": "student"}, headers=headers, timeout=60)

    write_keys(("old", "old-secret"))
    serve.run(build_app(parse_config({**config, "auth": {"keys_file": str(keys_file)}})), name=APP, route_prefix="/")
    try:
        missing = post(None)
        assert missing.status_code == 401 and missing.json()["error"]["type"] == "unauthorized"
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert post("wrong").status_code == 401
        assert httpx.get(f"{url}/v1/models").status_code == 401
        assert httpx.get(f"{url}/healthz").status_code == 200  # probes need no key
        assert post("old-secret").status_code == 200
        write_keys(("old", "old-secret"), ("new", "new-secret"))  # rotation: both valid for a while
        deadline = time.monotonic() + 30
        while post("new-secret").status_code != 200:
            assert time.monotonic() < deadline, "the new key was never accepted"
            time.sleep(0.3)
        # "old" has used 1 of its 3 a minute (its bucket survives the reload): two more pass, the next is over
        assert [post("old-secret").status_code for _ in range(2)] == [200, 200]
        limited = post("old-secret")
        assert limited.status_code == 429 and limited.json()["error"]["type"] == "rate_limited"
        assert int(limited.headers["retry-after"]) >= 1
        write_keys(("new", "new-secret"))  # the old key is withdrawn
        while post("old-secret").status_code != 401:
            assert time.monotonic() < deadline, "the withdrawn key still works"
            time.sleep(0.3)
    finally:
        serve.run(build_app(parse_config(config)), name=APP, route_prefix="/")

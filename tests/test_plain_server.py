"""The plain reference server answers the gateway's answer, field for field, so the load test compares equal work."""

from __future__ import annotations

from starlette.testclient import TestClient

from benchmarks.plain_server import build
from serving.model_ref import resolve_model
from serving.schemas import ClassifyResponse, ClassifyResult
from tests.builders import LABELS, TinyPair


def test_plain_server_answers_every_field_of_the_gateways_answer(tiny_pair: TinyPair) -> None:
    client = TestClient(build(str(tiny_pair.student), threads=1))
    answer = client.post("/v1/classify", json={"inputs": ["where is my card", "rain today?"]}).json()
    ClassifyResponse.model_validate(answer)  # the gateway's own answer model
    assert answer["model_versions"] == {"student": resolve_model(str(tiny_pair.student)).version}
    for result in answer["results"]:
        assert set(result) == set(ClassifyResult.model_fields)
        assert set(result["scores"]) == set(LABELS)
        assert abs(sum(result["scores"].values()) - 1.0) < 1e-5
        assert result["confidence"] == max(result["scores"].values())
        assert result["label"] == max(result["scores"], key=result["scores"].__getitem__)
    single = client.post("/v1/classify", json={"inputs": "hello"}).json()
    assert len(single["results"]) == 1

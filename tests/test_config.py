"""Config validation: every error names the field and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.config import load_config, parse_config
from serving.errors import ConfigError

MINIMAL = {"student": {"model": "s"}, "teacher": {"model": "t"}}


def _with(**sections: object) -> dict[str, object]:
    return {**MINIMAL, **sections}


def test_minimal_config_gets_batching_friendly_defaults() -> None:
    config = parse_config(MINIMAL)
    assert config.student.deployment.max_ongoing_requests > 5  # never Ray's collapsing default
    assert config.student.batching.max_batch_size <= config.student.deployment.max_ongoing_requests
    assert config.ingress.num_cpus == 0
    assert config.http.port == 8000
    assert config.cascade.signal is None and config.cascade.threshold is None  # manifest or defaults decide


@pytest.mark.parametrize(
    ("data", "fragments"),
    [
        (_with(cascade={"signal": "cosine"}), ["cascade.signal", "max_prob", "margin", "entropy"]),
        (_with(cascade={"threshold": -1}), ["cascade.threshold", "greater than or equal to 0"]),
        (_with(http={"port": 70000}), ["http.port", "65535"]),
        (_with(limits={"max_inputs": 0}), ["limits.max_inputs", "greater than 0"]),
        ({**MINIMAL, "student": {"model": "s", "backend": "tensorrt"}}, ["student.backend", "'onnx'"]),
        ({**MINIMAL, "teacher": {"model": "t", "device": "tpu"}}, ["teacher.device", "'cuda'"]),
        (
            {**MINIMAL, "student": {"model": "s", "deployment": {"max_queued_requests": 0}}},
            ["student.deployment.max_queued_requests", "-1 (no limit) or a positive integer"],
        ),
        (
            {**MINIMAL, "student": {"model": "s", "batching": {"max_batch_size": 100}}},
            ["max_batch_size (100)", "max_ongoing_requests (64)"],
        ),
        (
            {
                **MINIMAL,
                "teacher": {
                    "model": "t",
                    "deployment": {"autoscaling": {"min_replicas": 3, "max_replicas": 2}},
                },
            },
            ["teacher.deployment.autoscaling", "max_replicas (2) must be >= min_replicas (3)"],
        ),
        ({"student": {"model": "s"}}, ["teacher", "Field required"]),
        (_with(cascade={"treshold": 0.5}), ["cascade.treshold", "Extra inputs are not permitted"]),
    ],
)
def test_invalid_config_names_field_and_rule(data: dict[str, object], fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    for fragment in fragments:
        assert fragment in caught.value.message


def test_deployment_options_for_ray() -> None:
    config = parse_config(
        {
            **MINIMAL,
            "teacher": {"model": "t", "deployment": {"num_gpus": 1, "autoscaling": {"max_replicas": 4}}},
        }
    )
    options = config.teacher.deployment.ray_options("teacher")
    assert options["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 1.0}
    assert options["autoscaling_config"]["max_replicas"] == 4
    assert "num_replicas" not in options
    assert config.student.deployment.ray_options("student")["num_replicas"] == 1


def test_load_config_resolves_relative_model_folders(tmp_path: Path) -> None:
    (tmp_path / "models" / "student").mkdir(parents=True)
    path = tmp_path / "gateway.yaml"
    path.write_text("student: {model: models/student}\nteacher: {model: org/hub-model}\n")
    config = load_config(path)
    assert config.student.model == str((tmp_path / "models" / "student").resolve())
    assert config.teacher.model == "org/hub-model"


def test_load_config_reports_yaml_and_io_errors(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("student: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("example", ["single-machine.yaml", "gpu-cluster.yaml"])
def test_shipped_examples_are_valid(example: str) -> None:
    config = load_config(Path(__file__).parent.parent / "deploy" / example)
    assert config.student.model and config.teacher.model

"""Config validation: every error names the field and what is allowed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from serving.config import load_config, parse_config
from serving.errors import ConfigError
from tests.builders import TinyPair, promoted_registry

MINIMAL = {"student": {"model": "s"}, "teacher": {"model": "t"}}


def _with(**sections: object) -> dict[str, object]:
    return {**MINIMAL, **sections}


def test_minimal_config_gets_batching_friendly_defaults() -> None:
    config = parse_config(MINIMAL)
    assert config.student.deployment.max_ongoing_requests > 5  # never Ray's collapsing default
    assert config.student.batching.max_batch_size <= config.student.deployment.max_ongoing_requests
    assert config.ingress.num_cpus == 0
    # Naming one ingress field keeps the ingress's other defaults, not a model replica's.
    two = parse_config(_with(ingress={"num_replicas": 2}))
    assert two.ingress.num_replicas == 2
    assert two.ingress.model_dump(exclude={"num_replicas"}) == config.ingress.model_dump(exclude={"num_replicas"})
    assert parse_config(_with(ingress={"num_cpus": 0.5})).ingress.num_cpus == 0.5
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
            ["teacher.deployment.autoscaling", "max_replicas (2) must be greater than or equal to min_replicas (3)"],
        ),
        (
            {**MINIMAL, "student": {"model": "s", "deployment": {"autoscaling": {"upscale_delay": 5}}}},
            ["student.deployment.autoscaling", "unknown autoscaling keys ['upscale_delay']", "upscale_delay_s"],
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
    placed = parse_config({**MINIMAL, "student": {"model": "s", "deployment": {"resources": {"cpu_node": 1}}}})
    assert placed.student.deployment.ray_options("student")["ray_actor_options"]["resources"] == {"cpu_node": 1.0}
    assert options["autoscaling_config"]["max_replicas"] == 4
    assert "num_replicas" not in options
    assert config.student.deployment.ray_options("student")["num_replicas"] == 1


def test_autoscaling_takes_every_setting_ray_serve_takes() -> None:
    """Not a copy of three fields: what Ray Serve 2.60's AutoscalingConfig accepts goes through to Ray."""
    from ray.serve.config import AutoscalingConfig

    everything = {
        "min_replicas": 1,
        "initial_replicas": 2,
        "max_replicas": 8,
        "target_ongoing_requests": 16,
        "metrics_interval_s": 5.0,
        "look_back_period_s": 15.0,
        "upscale_smoothing_factor": 1.5,
        "downscale_smoothing_factor": 0.5,
        "upscale_delay_s": 10.0,
        "downscale_delay_s": 300.0,
        "downscale_to_zero_delay_s": 600.0,
        "aggregation_function": "max",
    }
    config = parse_config({**MINIMAL, "student": {"model": "s", "deployment": {"autoscaling": everything}}})
    options = config.student.deployment.ray_options("student")["autoscaling_config"]
    assert options == everything
    assert AutoscalingConfig.model_validate(options).upscale_delay_s == 10.0
    default = parse_config({**MINIMAL, "student": {"model": "s", "deployment": {"autoscaling": {"max_replicas": 3}}}})
    assert default.student.deployment.ray_options("s")["autoscaling_config"]["target_ongoing_requests"] == 32


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


DEPLOY = Path(__file__).parent.parent / "deploy"
PRODUCTION_MODELS = "/models"
"""Where the manifests mount the models volume (``deploy/kubernetes``): registry at ``/models/registry``."""


@pytest.mark.parametrize("example", sorted(p.name for p in DEPLOY.glob("*.yaml")), ids=str)
def test_every_shipped_config_starts_against_models_laid_out_as_in_production(
    example: str, tiny_pair: TinyPair, tmp_path: Path
) -> None:
    """Each config under deploy/ loads, and every model it names resolves: registry references against a
    registry with both roles promoted (as ``cascade redistill`` leaves it), folders as the README lays them out."""
    from serving.application import resolve_roles

    root = tmp_path / "models"
    promoted_registry(root / "registry", tiny_pair)
    for role, folder in (("student", tiny_pair.student), ("teacher", tiny_pair.teacher)):
        shutil.copytree(folder, root / role)  # the single-machine layout: ../models/<role> beside deploy/
    text = (DEPLOY / example).read_text(encoding="utf-8")
    for before in (f"registry:{PRODUCTION_MODELS}/", f" {PRODUCTION_MODELS}/"):  # absolute paths only
        text = text.replace(before, before.replace(f"{PRODUCTION_MODELS}/", f"{root}/"))
    (tmp_path / "deploy").mkdir()
    config = load_config(write_text(tmp_path / "deploy" / example, text))
    refs = resolve_roles(config)
    assert refs["student"].version == "tiny-student:1" and refs["teacher"].version == "tiny-teacher:1"


def write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_paths_come_from_the_environment_and_an_unset_variable_names_the_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_text(
        tmp_path / "gateway.yaml",
        "student: {model: 'registry:${CASCADE_DATA}/registry/student'}\nteacher: {model: org/hub}\n"
        "traffic_log: {path: '${CASCADE_DATA}/traffic'}\n",
    )
    monkeypatch.setenv("CASCADE_DATA", "/data")
    config = load_config(path)
    assert config.student.model == "registry:/data/registry/student"
    assert config.traffic_log.path == "/data/traffic"
    monkeypatch.delenv("CASCADE_DATA")
    with pytest.raises(ConfigError, match=r"student\.model: environment variable CASCADE_DATA is not set"):
        load_config(path)

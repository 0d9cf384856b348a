"""deploy/kubernetes, validated offline: built-in kinds by Kubernetes' own schemas (kubernetes-validate,
strict), custom resources by their operators' CRD schemas, and the RayService's Serve config by Ray
Serve's own schema, built into the application from exactly its import path and arguments."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from serving.constants import RAY_ENVIRONMENT_DEFAULTS
from tests.builders import TinyPair, promoted_registry
from tests.kubernetes_schemas import CRDS, errors

KUBERNETES = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.33"
CUSTOM_GROUPS = {group for group, _ in CRDS}


def _documents() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        found += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]
    return found


DOCUMENTS = _documents()


def _one(kind: str) -> dict[str, Any]:
    (document,) = [doc for _, doc in DOCUMENTS if doc["kind"] == kind]
    return document


def _is_custom(document: dict[str, Any]) -> bool:
    return document["apiVersion"].split("/")[0] in CUSTOM_GROUPS


@pytest.mark.parametrize(
    ("name", "document"),
    [(name, doc) for name, doc in DOCUMENTS if not _is_custom(doc)],
    ids=lambda value: value if isinstance(value, str) else value["kind"],
)
def test_built_in_kinds_pass_kubernetes_strict_validation(name: str, document: dict[str, Any]) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize(
    ("name", "document"),
    [(name, doc) for name, doc in DOCUMENTS if _is_custom(doc)],
    ids=lambda value: value if isinstance(value, str) else value["kind"],
)
def test_custom_resources_pass_their_crd_schema(name: str, document: dict[str, Any]) -> None:
    assert errors(document) == []


def test_a_misspelled_field_is_caught() -> None:
    import kubernetes_validate

    service = copy.deepcopy(_one("RayService"))
    cluster = service["spec"]["rayClusterConfig"]
    cluster["headGroupSpec"]["rayStartParam"] = cluster["headGroupSpec"].pop("rayStartParams")
    assert any("rayStartParam" in error for error in errors(service))
    monitor = copy.deepcopy(_one("PodMonitor"))
    monitor["spec"]["podMetricEndpoints"] = monitor["spec"].pop("podMetricsEndpoints")
    assert any("podMetricEndpoints" in error for error in errors(monitor))
    policy = copy.deepcopy(_one("NetworkPolicy"))
    policy["spec"]["ingres"] = policy["spec"].pop("ingress")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(policy, KUBERNETES_VERSION, strict=True)


def test_the_kustomization_lists_every_manifest_and_sets_every_image() -> None:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text(encoding="utf-8"))
    for resource in kustomization["resources"]:
        assert (KUBERNETES / resource).exists(), resource
    images = {image["name"] for image in kustomization["images"]}
    used = set()
    for _, document in DOCUMENTS:
        text = yaml.safe_dump(document)
        used |= {line.split("image:")[1].strip() for line in text.splitlines() if "image:" in line}
    assert used == images, (used, images)


def _containers(document: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = document["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [container for group in groups for container in group["template"]["spec"]["containers"]]


def test_every_ray_container_has_our_ray_settings_probes_and_the_shared_paths() -> None:
    mount = _config_map("cascade-paths")["CASCADE_DATA"]
    for container in _containers(_one("RayService")):
        env = {item["name"]: item.get("value") for item in container["env"]}
        assert {k: env.get(k) for k in RAY_ENVIRONMENT_DEFAULTS} == RAY_ENVIRONMENT_DEFAULTS
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert {"configMapRef": {"name": "cascade-paths"}} in container["envFrom"]
        assert {"name": "data", "mountPath": mount} in container["volumeMounts"]
    job = _one("CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert {"name": "data", "mountPath": mount} in job["containers"][0]["volumeMounts"]
    rayjob = _one("RayCronJob")["spec"]["jobTemplate"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert {"name": "data", "mountPath": mount} in rayjob["containers"][0]["volumeMounts"]


def test_teachers_go_to_the_gpu_group_and_students_to_the_cpu_group_only() -> None:
    cluster = _one("RayService")["spec"]["rayClusterConfig"]
    groups = {group["groupName"]: group for group in cluster["workerGroupSpecs"]}
    gpu_container = groups["gpu"]["template"]["spec"]["containers"][0]
    assert gpu_container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "cpu_node" not in groups["gpu"].get("resources", {})
    assert "cpu_node" in groups["cpu"]["resources"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # nothing lands on the head
    config = yaml.safe_load(_gateway_config_text())
    assert config["teacher"]["deployment"]["num_gpus"] == 1
    assert config["student"]["deployment"]["resources"] == {"cpu_node": 1}


def _config_map(name: str) -> dict[str, str]:
    (found,) = [doc for _, doc in DOCUMENTS if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == name]
    data: dict[str, str] = found["data"]
    return data


def _gateway_config_text() -> str:
    return _config_map("cascade-gateway-config")["gateway.yaml"]


def test_the_serve_config_parses_and_builds_the_application_from_its_import_path(
    tiny_pair: TinyPair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exactly what Ray Serve does with serveConfigV2 on the head: parse it, import the builder, call it."""
    from ray._common.utils import import_attr
    from ray.serve import Application
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(yaml.safe_load(_one("RayService")["spec"]["serveConfigV2"]))
    (application,) = schema.applications
    # The paths as the pods see them (cascade-paths), on a registry laid out by `cascade redistill`.
    paths = _config_map("cascade-paths")
    data = tmp_path / "data"
    promoted_registry(data / "registry", tiny_pair)
    for name, value in paths.items():
        monkeypatch.setenv(name, value.replace(paths["CASCADE_DATA"], str(data)))
    config = tmp_path / "gateway.yaml"
    config.write_text(_gateway_config_text().replace("/etc/cascade/keys/keys.yaml", str(tmp_path / "keys.yaml")))
    (secret,) = [doc for _, doc in DOCUMENTS if doc["kind"] == "Secret" and "keys.yaml" in doc["stringData"]]
    (tmp_path / "keys.yaml").write_text(secret["stringData"]["keys.yaml"])

    args = {**application.args, "config": str(config)}
    built = call_user_app_builder_with_args_if_necessary(import_attr(application.import_path), args)
    assert isinstance(built, Application)
    assert application.import_path == "serving.application:app_builder"
    assert application.args["config"] == paths["CASCADE_CONFIG"]


SHARED_SCHEMAS = Path(__file__).resolve().parents[2] / "shared" / "schemas"


@pytest.mark.skipif(not SHARED_SCHEMAS.exists(), reason="the workplace's shared/schemas is not beside this checkout")
def test_the_vendored_schemas_are_the_operators_crds_unchanged() -> None:
    """tests/crd_schemas holds what the CRDs in shared/schemas say, extracted, not edited."""
    import gzip
    import json

    from tests.kubernetes_schemas import SCHEMAS, extract

    for (_, kind), relative in CRDS.items():
        vendored = json.loads(gzip.decompress((SCHEMAS / f"{kind.lower()}.schema.json.gz").read_bytes()))
        assert vendored == extract(SHARED_SCHEMAS / relative), kind

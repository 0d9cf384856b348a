"""Offline validation of custom resources (RayService, RayCronJob, PodMonitor, PrometheusRule) against
the operators' own CRD schemas, as ``kubectl apply --validate=strict`` would.

The schemas in ``tests/crd_schemas/`` are the served versions' ``openAPIV3Schema`` of the CRDs in
the workplace's ``shared/schemas`` (KubeRay commit feeaf72, Prometheus operator commit 6adcebc;
Apache-2.0, see ``tests/crd_schemas/NOTICE``), extracted unchanged and gzipped:
``python -m tests.kubernetes_schemas <shared/schemas>`` writes them again.
"""

from __future__ import annotations

import copy
import gzip
import json
import sys
from pathlib import Path
from typing import Any

import yaml

SCHEMAS = Path(__file__).parent / "crd_schemas"
CRDS = {
    ("ray.io", "RayService"): "kuberay/ray.io_rayservices.yaml",
    ("ray.io", "RayJob"): "kuberay/ray.io_rayjobs.yaml",
    ("ray.io", "RayCronJob"): "kuberay/ray.io_raycronjobs.yaml",
    ("monitoring.coreos.com", "PodMonitor"): "prometheus-operator/monitoring.coreos.com_podmonitors.yaml",
    ("monitoring.coreos.com", "PrometheusRule"): "prometheus-operator/monitoring.coreos.com_prometheusrules.yaml",
}


def extract(crd_file: Path) -> dict[str, Any]:
    """Served version → its ``openAPIV3Schema``, from a CustomResourceDefinition file."""
    crd = yaml.safe_load(crd_file.read_text(encoding="utf-8"))
    return {v["name"]: v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"] if v.get("served")}


def _file(kind: str) -> Path:
    return SCHEMAS / f"{kind.lower()}.schema.json.gz"


def schema_for(api_version: str, kind: str) -> dict[str, Any]:
    group, _, version = api_version.partition("/")
    if (group, kind) not in CRDS:
        raise KeyError(f"no CRD schema for {api_version} {kind}")
    schemas: dict[str, dict[str, Any]] = json.loads(gzip.decompress(_file(kind).read_bytes()))
    return schemas[version]


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema as the API server applies it: objects with ``properties`` are closed unless they keep
    unknown fields, and ``x-kubernetes-int-or-string`` takes an integer or a string."""
    schema = copy.deepcopy(schema)

    def close(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                close(item)
            return
        if not isinstance(node, dict):
            return
        if node.get("x-kubernetes-int-or-string"):
            node.pop("type", None)
            node.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
        if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            node.setdefault("additionalProperties", False)
        for key in ("properties", "patternProperties", "definitions"):
            for child in node.get(key, {}).values():
                close(child)
        for key in ("items", "additionalProperties", "not"):
            if isinstance(node.get(key), dict | list):
                close(node[key])
        for key in ("anyOf", "allOf", "oneOf"):
            close(node.get(key, []))

    close(schema)
    return schema


def errors(document: dict[str, Any]) -> list[str]:
    """Every violation of the document's CRD schema, as ``path: message``."""
    import jsonschema

    validator = jsonschema.Draft7Validator(strict(schema_for(document["apiVersion"], document["kind"])))
    return [
        f"{'.'.join(str(p) for p in error.absolute_path) or '(top)'}: {error.message}"
        for error in validator.iter_errors(document)
    ]


def write_schemas(shared_schemas: Path) -> None:
    SCHEMAS.mkdir(exist_ok=True)
    for (_, kind), relative in CRDS.items():
        payload = json.dumps(extract(shared_schemas / relative), sort_keys=True, separators=(",", ":"))
        _file(kind).write_bytes(gzip.compress(payload.encode(), mtime=0))


if __name__ == "__main__":
    write_schemas(Path(sys.argv[1]))

"""Binding the Ray Serve application from a config: which deployments, with which options and user_config.

Model folders travel in ``user_config``, never in constructor arguments: a promotion then changes
only ``user_config``, which Ray Serve applies in place (``reconfigure``) instead of rolling replicas.
"""

from __future__ import annotations

from typing import Any, cast

from ray import serve
from ray.serve import Deployment

from serving.config import GatewayConfig, ModelSettings
from serving.ingress import GatewayIngress
from serving.model_ref import ModelRef, check_same_labels, resolve_model
from serving.replica import ModelReplica
from serving.vocabulary import ROLES, Role


def backend_name(ref: ModelRef, settings: ModelSettings) -> str:
    """The backend ``backend: auto`` picks for this model: ONNX Runtime when the folder has ``model.onnx``."""
    return "onnx" if settings.backend == "onnx" or (settings.backend == "auto" and ref.has_onnx) else "torch"


def _role_summary(ref: ModelRef, settings: ModelSettings) -> dict[str, Any]:
    """What ``/v1/models`` shows of a role, and what the ingress needs of it (labels, temperature, batch)."""
    calibration = ref.manifest.calibration if ref.manifest is not None else None
    return {
        "model": ref.location,
        "version": ref.version,
        "labels": list(ref.labels),
        "temperature": ref.temperature,
        "calibration": {
            "signal": calibration.signal.value,
            "threshold": calibration.threshold,
            "target": calibration.target.model_dump(),
            "expected_escalation_rate": calibration.expected_escalation_rate,
        }
        if calibration is not None
        else None,
        "backend": backend_name(ref, settings),
        "device": settings.device,
        "max_batch_size": settings.batching.max_batch_size,
        "placement": "ingress" if settings.colocate else "deployment",
    }


def resolve_roles(config: GatewayConfig) -> dict[Role, ModelRef]:
    """Both roles' models, verified (checksums) and checked to share one label list."""
    refs = {role: resolve_model(getattr(config, role).model) for role in ROLES}
    check_same_labels(refs["student"], refs["teacher"])
    return refs


def gateway_user_config(config: GatewayConfig, refs: dict[Role, ModelRef] | None = None) -> dict[str, Any]:
    """What the ingress applies live (its ``user_config``): settings, the models in service, the calibration."""
    refs = refs or resolve_roles(config)
    student_manifest = refs["student"].manifest
    calibration = student_manifest.calibration if student_manifest is not None else None
    return {
        "roles": {role: _role_summary(refs[role], getattr(config, role)) for role in ROLES},
        "calibration": calibration.model_dump(mode="json") if calibration is not None else None,
        "cascade": config.cascade.model_dump(mode="json"),
        "limits": config.limits.model_dump(),
        "cost": config.cost.model_dump(),
        "shadow": config.shadow.model_dump(),
        "drift": config.drift.model_dump(),
        "traffic_log": config.traffic_log.model_dump(),
    }


def build_app(config: GatewayConfig) -> serve.Application:
    """Resolve both models (checksums, same labels) and bind the application; fails before deploying."""
    refs = resolve_roles(config)
    # @serve.deployment turned both classes into Deployments; mypy still sees the classes.
    replica, ingress = cast(Deployment, ModelReplica), cast(Deployment, GatewayIngress)
    colocated = config.student.colocate
    handles = {
        role: replica.options(
            **getattr(config, role).deployment.ray_options(role), user_config={"model": refs[role].location}
        ).bind(role, getattr(config, role).model_dump())
        for role in ROLES
        if not (role == "student" and colocated)
    }
    gateway = ingress.options(**config.ingress.ray_options("gateway"), user_config=gateway_user_config(config, refs))
    return gateway.bind(handles.get("student"), handles["teacher"], config.student.model_dump() if colocated else None)


def build_direct_student_app(config: GatewayConfig) -> serve.Application:
    """The student's deployment alone as an HTTP app (for measuring the router's overhead)."""
    replica = cast(Deployment, ModelReplica)
    options = config.student.deployment.ray_options("student-direct")
    location = resolve_model(config.student.model).location
    return replica.options(**options, user_config={"model": location}).bind("student", config.student.model_dump())


__all__ = ["build_app", "build_direct_student_app", "gateway_user_config", "resolve_roles"]

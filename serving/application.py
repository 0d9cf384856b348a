"""Binding the Ray Serve application from a config: which deployments, with which options and user_config.

Model folders travel in ``user_config``, never in constructor arguments: a promotion then changes
only ``user_config``, which Ray Serve applies in place (``reconfigure``) instead of rolling replicas.

That needs each deployment's code version to stay the same between two ``serve.run`` calls. Ray 2.60
gives a deployment without one a random version on every ``serve.run``
(``ray/serve/_private/client.py``: ``deployment._version or get_random_string()``), so every promotion
used to restart every replica, the teacher's included, and requests waited for the new ones. Its
public ``version=`` option is removed (it raises), so ``_stable_version`` sets it the way Ray's own
decorator does (``options(..., _internal=True)``): a hash of our source code and the constructor
arguments. Placement and scaling options are compared by Ray itself; a change there still rolls.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any, cast

from ray import serve
from ray.serve import Deployment

from serving import constants as c
from serving.config import AuthSettings, GatewayConfig, ModelSettings, load_config
from serving.errors import ConfigError
from serving.ingress import GatewayIngress
from serving.model_ref import ModelRef, check_same_labels, model_summary, resolve_model
from serving.policy import middle_stage
from serving.replica import ModelReplica
from serving.vocabulary import Role


def backend_name(ref: ModelRef, settings: ModelSettings) -> str:
    """The backend ``backend: auto`` picks for this model: ONNX Runtime when the folder has ``model.onnx``."""
    return "onnx" if settings.backend == "onnx" or (settings.backend == "auto" and ref.has_onnx) else "torch"


def _role_summary(ref: ModelRef, settings: ModelSettings) -> dict[str, Any]:
    """What ``/v1/models`` shows of a role, and what the ingress needs of it (labels, temperature, batch)."""
    return {
        **model_summary(ref),
        "reference": settings.model,
        "backend": backend_name(ref, settings),
        "device": settings.device,
        "max_batch_size": settings.batching.max_batch_size,
        "calls_in_flight": c.CALLS_IN_FLIGHT_PER_REPLICA * settings.deployment.most_replicas,
        "placement": "ingress" if settings.colocate else "deployment",
    }


def resolve_roles(config: GatewayConfig) -> dict[Role, ModelRef]:
    """Every role's model, verified (checksums) and checked to share one label list.

    Also checks that the student's calibration fits the roles served (a chain's needs its middle
    model, and only it), so a mismatch fails here, before anything is deployed or swapped.
    """
    refs = {role: resolve_model(config.model_settings(role).model) for role in config.roles}
    for role in config.roles:
        if role != "student":
            check_same_labels(refs["student"], refs[role])
    manifest = refs["student"].manifest
    middle = refs.get("middle")
    middle_stage(manifest.calibration if manifest is not None else None, middle.version if middle else None)
    return refs


def gateway_user_config(config: GatewayConfig, refs: dict[Role, ModelRef] | None = None) -> dict[str, Any]:
    """What the ingress applies live (its ``user_config``): settings, the models in service, the calibration."""
    refs = refs or resolve_roles(config)
    student_manifest = refs["student"].manifest
    calibration = student_manifest.calibration if student_manifest is not None else None
    return {
        "roles": {role: _role_summary(refs[role], config.model_settings(role)) for role in config.roles},
        "calibration": calibration.model_dump(mode="json") if calibration is not None else None,
        "cascade": config.cascade.model_dump(mode="json"),
        "limits": config.limits.model_dump(),
        "resilience": config.resilience.model_dump(),
        "auth": config.auth.model_dump(mode="json") if isinstance(config.auth, AuthSettings) else None,
        "cost": config.cost.model_dump(),
        "shadow": config.shadow.model_dump(),
        "drift": config.drift.model_dump(),
        "traffic_log": config.traffic_log.model_dump(),
        "reload": config.reload.model_dump(),
    }


_SOURCE_PACKAGES = ("serving", "router")


@functools.cache
def _source_digest() -> str:
    """A hash of the code that runs in replicas: new code must roll them, the same code must not."""
    digest = hashlib.sha256()
    root = Path(__file__).resolve().parents[1]
    for package in _SOURCE_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _stable_version(deployment: Deployment, *init_args: Any) -> Deployment:
    """The deployment with a code version that changes only with our code or its constructor arguments."""
    payload = json.dumps(init_args, sort_keys=True, default=str).encode()
    version = hashlib.sha256(_source_digest().encode() + payload).hexdigest()[:16]
    return deployment.options(version=version, _internal=True)


def build_app(config: GatewayConfig) -> serve.Application:
    """Resolve every role's model (checksums, same labels) and bind the application; fails before deploying."""
    refs = resolve_roles(config)
    # @serve.deployment turned both classes into Deployments; mypy still sees the classes.
    replica, ingress = cast(Deployment, ModelReplica), cast(Deployment, GatewayIngress)
    colocated = config.student.colocate
    handles = {}
    for role in config.roles:
        if role == "student" and colocated:
            continue
        settings = config.model_settings(role).model_dump()
        user_config = {
            "model": refs[role].location,
            "reference": config.model_settings(role).model,
            "poll_s": config.reload.poll_s,
        }
        deployment = replica.options(
            **config.model_settings(role).deployment.ray_options(role), user_config=user_config
        )
        handles[role] = _stable_version(deployment, role, settings).bind(role, settings)
    colocated_settings = config.student.model_dump() if colocated else None
    gateway = ingress.options(**config.ingress.ray_options("gateway"), user_config=gateway_user_config(config, refs))
    gateway = _stable_version(gateway, colocated_settings, sorted(handles))  # a new role needs a new handle
    return gateway.bind(handles.get("student"), handles["teacher"], colocated_settings, handles.get("middle"))


def app_builder(args: dict[str, str]) -> serve.Application:
    """Ray Serve's application builder, for a RayService or ``serve run``: ``import_path:
    serving.application:app_builder`` with ``args: {config: <the gateway's YAML>}``.

    The config is read where Ray builds the application (the head), with that process's environment
    for its ``${NAME}`` paths; the Ray settings ``cascade serve`` sets by environment come from the
    image or the pod (``serving.constants.RAY_ENVIRONMENT_DEFAULTS``).
    """
    path = args.get("config")
    if not path:
        raise ConfigError("args.config: the path of the gateway's YAML config is required")
    return build_app(load_config(path))


def build_direct_student_app(config: GatewayConfig) -> serve.Application:
    """The student's deployment alone as an HTTP app (for measuring the router's overhead)."""
    replica = cast(Deployment, ModelReplica)
    options = config.student.deployment.ray_options("student-direct")
    location = resolve_model(config.student.model).location
    return replica.options(**options, user_config={"model": location}).bind("student", config.student.model_dump())


__all__ = ["app_builder", "build_app", "build_direct_student_app", "gateway_user_config", "resolve_roles"]

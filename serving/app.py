"""The Ray Serve application: an ingress (the router) and one deployment per model role.

    HTTP ─▶ Gateway (ingress, FastAPI) ──handle──▶ ModelReplica "student"  (CPU, many)
                                        └─handle──▶ ModelReplica "teacher"  (GPU where configured)

The ingress validates, runs ``serving.cascade.run_cascade`` and answers; the replicas only turn
batches of texts into logits. ``cascade`` and ``limits`` reach the ingress as its ``user_config`` and
so change live through ``reconfigure``; everything about a model rolls that role's replicas.
"""

# No ``from __future__ import annotations`` here: FastAPI must see the real ``Request`` annotations
# of the ingress methods, which Ray Serve's class-based ingress wraps.
import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve import Deployment
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from router import CascadePolicy, Signal
from serving import constants as c
from serving.artifact import ModelRef, check_same_labels, resolve_model
from serving.backends import load_backend
from serving.cascade import run_cascade
from serving.config import CascadeSettings, GatewayConfig, LimitSettings, ModelSettings
from serving.errors import Overloaded, error_response
from serving.schemas import (
    ClassifyRequest,
    ClassifyResponse,
    ErrorResponse,
    check_body_size,
    parse_classify_request,
)

logger = logging.getLogger("cascade.gateway")
ROLES = ("student", "teacher")


def _count_texts(calls: list[list[str]]) -> int:
    return sum(len(texts) for texts in calls)


@serve.deployment
class ModelReplica:
    """One role's model. Calls are batched by text count up to ``batching.max_batch_size``."""

    def __init__(self, role: str, settings: dict[str, Any]) -> None:
        self._role = role
        self._settings = ModelSettings.model_validate(settings)
        self._ref = resolve_model(self._settings.model)
        self._backend = load_backend(
            self._ref,
            backend=self._settings.backend,
            device=self._settings.device,
            threads=self._settings.threads,
            max_length=self._settings.max_length,
        )
        # @serve.batch adds these setters to the method; its static arguments are only defaults.
        self.logits.set_max_batch_size(self._settings.batching.max_batch_size)  # type: ignore[attr-defined]
        self.logits.set_batch_wait_timeout_s(self._settings.batching.batch_wait_timeout_s)  # type: ignore[attr-defined]
        # Warm up, so that "constructed" means "has answered once" (readiness relies on it).
        self._backend.logits(["warm up"])

    @serve.batch(max_batch_size=c.DEFAULT_MAX_BATCH_SIZE, batch_size_fn=_count_texts)
    async def logits(self, calls: list[list[str]]) -> list[np.ndarray]:
        flat = [text for texts in calls for text in texts]
        # Off the event loop, so the replica keeps accepting calls for the next batch meanwhile.
        logits = await asyncio.to_thread(self._backend.logits, flat)
        bounds = np.cumsum([len(texts) for texts in calls])[:-1]
        return list(np.split(logits, bounds))

    def info(self) -> dict[str, Any]:
        return {
            "role": self._role,
            "model": self._ref.location,
            "version": self._ref.version,
            "labels": list(self._ref.labels),
            "backend": self._backend.name,
            "device": self._backend.device,
            "temperature": self._ref.temperature,
            "threads": self._settings.threads,
            "max_batch_size": self._settings.batching.max_batch_size,
        }


app = FastAPI(
    title="cascade-gateway",
    summary="A distilled student answers; an uncertain one escalates to the teacher.",
    version="0.1.0",
)


@app.exception_handler(StarletteHTTPException)
async def _http_exception(_: Request, error: StarletteHTTPException) -> JSONResponse:
    kind = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
    return JSONResponse({"error": {"type": kind, "message": str(error.detail)}}, error.status_code)


@app.middleware("http")
async def _one_error_shape(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    """Turn any failure into the one error body, logged with the request id.

    The request id itself is Ray Serve's: its proxy takes ``X-Request-Id`` from the request or makes
    one, hands it to us in the request headers, and returns it on every response.
    """
    try:
        return await call_next(request)
    except Exception as error:
        status, body = error_response(error)
        if status >= 500:
            logger.exception("request %s failed", request.headers.get("x-request-id", "-"))
        response = JSONResponse(body, status)
        if isinstance(error, Overloaded):
            response.headers["Retry-After"] = "1"
        return response


_CLASSIFY_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": ClassifyRequest.model_json_schema()}},
    }
}
_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 413, 422, 503)
}


@serve.deployment
@serve.ingress(app)
class Gateway:
    """The router: validate, run the cascade, answer. Holds no model."""

    def __init__(
        self,
        student: DeploymentHandle[Any],
        teacher: DeploymentHandle[Any],
        roles: dict[str, dict[str, Any]],
    ) -> None:
        self._handles = {"student": student, "teacher": teacher}
        self._roles = roles
        self._labels: list[str] = roles["student"]["labels"]
        self._versions = {role: roles[role]["version"] for role in ROLES}
        # Ray Serve calls reconfigure(user_config) right after construction; defaults until then.
        self.reconfigure({})

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply ``cascade`` and ``limits`` live (Ray Serve calls this on a config change)."""
        self._limits = LimitSettings.model_validate(user_config.get("limits", {}))
        cascade = CascadeSettings.model_validate(user_config.get("cascade", {}))
        calibrated = self._roles["student"].get("calibration") or {}
        self._policy = CascadePolicy(
            threshold=cascade.threshold
            if cascade.threshold is not None
            else calibrated.get("threshold", c.DEFAULT_THRESHOLD),
            signal=cascade.signal or Signal(calibrated.get("signal", c.DEFAULT_SIGNAL)),
            temperature=cascade.temperature or self._roles["student"]["temperature"],
        )

    async def _call(self, role: str, texts: list[str]) -> np.ndarray:
        """Send ``texts`` to a role in chunks that fit its batch, concurrently; map Ray's errors."""
        size = self._roles[role]["max_batch_size"]
        handle = self._handles[role]
        try:
            parts = await asyncio.gather(
                *(handle.logits.remote(texts[i : i + size]) for i in range(0, len(texts), size))
            )
        except BackPressureError as error:
            raise Overloaded(f"the {role} is at its queue limit; retry shortly") from error
        return np.concatenate(parts, axis=0)

    @app.post(
        "/v1/classify",
        response_model=ClassifyResponse,
        responses=_ERROR_RESPONSES,
        openapi_extra=_CLASSIFY_OPENAPI,
    )
    async def classify(self, request: Request) -> dict[str, Any]:
        """Classify one text or a list of texts; the cascade decides who answers unless ``route`` says."""
        limits = self._limits
        check_body_size(request.headers.get("content-length"), limits)
        body = bytearray()
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > limits.max_body_bytes:
                break
        parsed = parse_classify_request(bytes(body), limits)
        outcome = await run_cascade(
            parsed.texts,
            parsed.route,
            policy=self._policy,
            labels=self._labels,
            teacher_temperature=self._roles["teacher"]["temperature"],
            student=lambda texts: self._call("student", texts),
            teacher=lambda texts: self._call("teacher", texts),
        )
        return {
            "results": [result.model_dump() for result in outcome.results],
            "model_versions": self._versions,
        }

    @app.get("/v1/models")
    async def models(self) -> dict[str, Any]:
        """The models behind each role, and the cascade rule in force."""
        return {
            "roles": self._roles,
            "cascade": {
                "signal": self._policy.signal.value,
                "threshold": self._policy.threshold,
                "temperature": self._policy.temperature,
            },
            "limits": self._limits.model_dump(),
        }

    @app.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        """The ingress process is alive (it says nothing about the models)."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(self) -> JSONResponse:
        """Both roles are loaded and answering."""
        roles: dict[str, str] = {}
        for role, handle in self._handles.items():
            try:
                await asyncio.wait_for(handle.info.remote(), c.READINESS_PROBE_TIMEOUT_S)
                roles[role] = "ready"
            except Exception:  # noqa: BLE001 - any failure means "not ready", and says which role
                roles[role] = "not ready"
        ready = all(state == "ready" for state in roles.values())
        return JSONResponse({"status": "ready" if ready else "not ready", "roles": roles}, 200 if ready else 503)


def _role_summary(ref: ModelRef, settings: ModelSettings) -> dict[str, Any]:
    return {
        "model": ref.location,
        "version": ref.version,
        "labels": list(ref.labels),
        "temperature": ref.temperature,
        "calibration": {k: ref.manifest.calibration[k] for k in ("signal", "threshold")}
        if ref.manifest is not None and ref.manifest.calibration
        else None,
        "backend": "onnx" if settings.backend == "onnx" or (settings.backend == "auto" and ref.has_onnx) else "torch",
        "device": settings.device,
        "max_batch_size": settings.batching.max_batch_size,
    }


def build_app(config: GatewayConfig) -> serve.Application:
    """Resolve both models (checksums, same labels) and bind the application; fails before deploying."""
    refs = {role: resolve_model(getattr(config, role).model) for role in ROLES}
    check_same_labels(refs["student"], refs["teacher"])
    roles = {role: _role_summary(refs[role], getattr(config, role)) for role in ROLES}
    # @serve.deployment turned both classes into Deployments; mypy still sees the classes.
    replica, gateway = cast(Deployment, ModelReplica), cast(Deployment, Gateway)
    handles = {
        role: replica.options(**getattr(config, role).deployment.ray_options(role)).bind(
            role, getattr(config, role).model_dump()
        )
        for role in ROLES
    }
    user_config = {"cascade": config.cascade.model_dump(mode="json"), "limits": config.limits.model_dump()}
    return gateway.options(**config.ingress.ray_options("gateway"), user_config=user_config).bind(
        handles["student"], handles["teacher"], roles
    )


__all__ = ["Gateway", "ModelReplica", "build_app"]

"""The Ray Serve application: an ingress (the router) and one deployment per model role.

    HTTP ─▶ Gateway (ingress, FastAPI) ──handle──▶ ModelReplica "student"  (CPU, many)
                                        └─handle──▶ ModelReplica "teacher"  (GPU where configured)

The ingress validates, runs ``serving.cascade.run_cascade`` and answers; the replicas only turn
batches of texts into logits (and say what compute time each call used). ``cascade``, ``limits``,
``cost``, ``shadow`` and ``drift`` reach the ingress as its ``user_config`` and so change live through
``reconfigure``; everything about a model rolls that role's replicas. Metrics: ``serving.metrics``.
"""

# No ``from __future__ import annotations`` here: FastAPI must see the real ``Request`` annotations
# of the ingress methods, which Ray Serve's class-based ingress wraps.
import asyncio
import logging
import os
import random
import time
from typing import Any, cast

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve import Deployment
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from router import CascadePolicy, Signal
from serving import constants as c
from serving.artifact import ModelRef, check_same_labels, resolve_model
from serving.backends import load_backend
from serving.cascade import CascadeOutcome, run_cascade
from serving.config import (
    CascadeSettings,
    CostSettings,
    DriftSettings,
    GatewayConfig,
    LimitSettings,
    ModelSettings,
    ShadowSettings,
    TrafficLogSettings,
)
from serving.errors import CascadeError, Overloaded, error_response
from serving.metrics import GatewayMetrics, ReplicaMetrics, RequestUsage
from serving.schemas import (
    ClassifyRequest,
    ClassifyResponse,
    ErrorResponse,
    check_body_size,
    parse_classify_request,
)
from serving.traffic_log import TrafficLogWriter, TrafficRecord

logger = logging.getLogger("cascade.gateway")
ROLES = ("student", "teacher")
WARM_UP_TEXTS = 8


def _count_texts(calls: list[list[str]]) -> int:
    return sum(len(texts) for texts in calls)


class ModelRunner:
    """One role's model in this process: load, warm up, batch calls by text count, time every batch.

    Used by ``ModelReplica`` (a role's own deployment) and, for a student with ``colocate: true``, by
    the ingress itself. ``@serve.batch`` works on any async method, not only a deployment's.
    """

    def __init__(self, role: str, settings: ModelSettings, location: str | None = None) -> None:
        self.role = role
        self.settings = settings
        self.ref = resolve_model(location or settings.model)
        self.backend = load_backend(
            self.ref,
            backend=settings.backend,
            device=settings.device,
            threads=settings.threads,
            max_length=settings.max_length,
        )
        # @serve.batch adds these setters to the method; its static arguments are only defaults.
        self._batched.set_max_batch_size(settings.batching.max_batch_size)  # type: ignore[attr-defined]
        self._batched.set_batch_wait_timeout_s(settings.batching.batch_wait_timeout_s)  # type: ignore[attr-defined]
        # Warm up, so that "constructed" means "has answered once" (readiness relies on it); the timed
        # second pass seeds the ingress's estimate of what a text costs on this role.
        self.backend.logits(["warm up"] * WARM_UP_TEXTS)
        started = time.perf_counter()
        self.backend.logits(["warm up"] * WARM_UP_TEXTS)
        self.seconds_per_text = (time.perf_counter() - started) / WARM_UP_TEXTS
        self._metrics = ReplicaMetrics(role, self.ref.version)

    async def logits(self, texts: list[str]) -> tuple[np.ndarray, float]:
        """Logits for ``texts`` and the compute seconds they used (their share of the batch)."""
        self._metrics.queued(len(texts))
        try:
            return await self._batched(texts)
        finally:
            self._metrics.queued(-len(texts))

    @serve.batch(max_batch_size=c.DEFAULT_MAX_BATCH_SIZE, batch_size_fn=_count_texts)
    async def _batched(self, calls: list[list[str]]) -> list[tuple[np.ndarray, float]]:
        flat = [text for texts in calls for text in texts]
        self._metrics.batch(len(flat))
        started = time.perf_counter()
        # Off the event loop, so the process keeps accepting calls for the next batch meanwhile.
        logits = await asyncio.to_thread(self.backend.logits, flat)
        seconds_per_text = (time.perf_counter() - started) / len(flat)
        bounds = np.cumsum([len(texts) for texts in calls])[:-1]
        return [(part, seconds_per_text * len(part)) for part in np.split(logits, bounds)]

    def info(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "model": self.ref.location,
            "version": self.ref.version,
            "labels": list(self.ref.labels),
            "backend": self.backend.name,
            "device": self.backend.device,
            "temperature": self.ref.temperature,
            "threads": self.settings.threads,
            "max_batch_size": self.settings.batching.max_batch_size,
            "seconds_per_text": self.seconds_per_text,
        }


async def _swap(current: ModelRunner | None, role: str, settings: ModelSettings, location: str | None) -> ModelRunner:
    """The runner for ``location``: the current one if it already runs it, else a new one, loaded off-loop."""
    if current is not None and location in (None, current.ref.location):
        return current
    runner = await asyncio.to_thread(ModelRunner, role, settings, location)
    if current is not None:
        logger.warning("%s: swapped %s for %s", role, current.ref.version, runner.ref.version)
    return runner


@serve.deployment
class ModelReplica:
    """One role's model as its own deployment (the default placement of both roles).

    Which model folder it runs is its ``user_config`` (``{"model": <resolved folder>}``), so that a
    promotion or rollback reaches it through ``reconfigure``: the new model is loaded and warmed up
    beside the old one, then swapped in; calls already in a batch finish on the old one. No replica
    restarts and no request fails.
    """

    def __init__(self, role: str, settings: dict[str, Any]) -> None:
        self._role = role
        self._settings = ModelSettings.model_validate(settings)
        self._runner: ModelRunner | None = None

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        self._runner = await _swap(self._runner, self._role, self._settings, user_config.get("model"))

    @property
    def runner(self) -> ModelRunner:
        if self._runner is None:  # Ray Serve calls reconfigure before the first request
            raise RuntimeError("the replica has no model: its user_config never arrived")
        return self._runner

    async def logits(self, texts: list[str]) -> tuple[np.ndarray, float]:
        return await self.runner.logits(texts)

    def info(self) -> dict[str, Any]:
        return self.runner.info()

    async def __call__(self, request: Request) -> JSONResponse:
        """The replica as its own HTTP endpoint (``cascade serve --direct-student``), for load tests only.

        Exists to measure what the router adds: the same deployment class, batching and model, reached
        straight from Ray Serve's proxy. Answers ``{"results": [{"label", "confidence"}]}`` (max
        probability after temperature); no limits, no cascade, no metrics beyond the replica's own.
        """
        body = await request.json()
        texts = body["inputs"] if isinstance(body["inputs"], list) else [body["inputs"]]
        logits, _ = await self.runner.logits(texts)
        verdict = CascadePolicy(0.0, Signal.MAX_PROB, self.runner.ref.temperature).judge(logits)
        labels = self.runner.ref.labels
        return JSONResponse(
            {
                "results": [
                    {"label": labels[int(np.argmax(p))], "confidence": float(c)}
                    for p, c in zip(verdict.probabilities, verdict.confidence, strict=True)
                ]
            }
        )


app = FastAPI(
    title="cascade-gateway",
    summary="A distilled student answers; an uncertain one escalates to the teacher.",
    version="0.1.0",
)


@app.exception_handler(StarletteHTTPException)
async def _http_exception(_: Request, error: StarletteHTTPException) -> JSONResponse:
    kind = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
    return JSONResponse({"error": {"type": kind, "message": str(error.detail)}}, error.status_code)


async def _one_error_shape(request: Request, error: Exception) -> JSONResponse:
    """Turn any failure into the one error body (``serving.errors.error_response``), logged with the request id.

    An exception handler, not an HTTP middleware: Starlette's BaseHTTPMiddleware costs every request
    an extra task and stream wrapper. The request id is Ray Serve's: its proxy takes ``X-Request-Id``
    from the request or makes one, hands it to us in the request headers, and returns it.
    """
    status, body = error_response(error)
    if status >= 500:
        logger.error("request %s failed", request.headers.get("x-request-id", "-"), exc_info=error)
    response = JSONResponse(body, status)
    if isinstance(error, Overloaded):
        response.headers["Retry-After"] = "1"
    return response


# Ours (4xx and 503) through Starlette's exception middleware; anything else through its server-error
# middleware, which answers with the same body (and re-raises, so the failure is also logged by Serve).
app.add_exception_handler(CascadeError, _one_error_shape)
app.add_exception_handler(Exception, _one_error_shape)


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
    """The router: validate, run the cascade, answer.

    Holds no model, except a student with ``colocate: true``: then the student runs in this process
    (``colocated_student`` is its settings) and a student answer costs no handle hop.
    """

    def __init__(
        self,
        student: DeploymentHandle[Any] | None,
        teacher: DeploymentHandle[Any],
        colocated_student: dict[str, Any] | None = None,
    ) -> None:
        self._handles: dict[str, Any] = {"student": student, "teacher": teacher}
        self._local: dict[str, ModelRunner] = {}
        self._colocated = ModelSettings.model_validate(colocated_student) if colocated_student else None
        self._metrics = GatewayMetrics()
        self._shadow_tasks: set[asyncio.Task[None]] = set()
        self._random = random.Random()
        self._traffic_log: TrafficLogWriter | None = None
        self._traffic_log_settings: TrafficLogSettings | None = None
        # Ray Serve calls reconfigure(user_config) right after construction, before any request.

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply the live settings and the models in service (on start, a config change or a promotion)."""
        roles: dict[str, dict[str, Any]] = user_config["roles"]
        if self._colocated is not None:
            current = self._local.get("student")
            self._local["student"] = await _swap(current, "student", self._colocated, roles["student"]["model"])
        self._roles = roles
        self._labels: list[str] = roles["student"]["labels"]
        self._versions = {role: roles[role]["version"] for role in ROLES}
        self._drift_reference = user_config.get("drift_reference")
        self._limits = LimitSettings.model_validate(user_config.get("limits", {}))
        self._shadow = ShadowSettings.model_validate(user_config.get("shadow", {}))
        cost = CostSettings.model_validate(user_config.get("cost", {}))
        drift = DriftSettings.model_validate(user_config.get("drift", {}))
        self._configure_traffic_log(TrafficLogSettings.model_validate(user_config.get("traffic_log", {})))
        cascade = CascadeSettings.model_validate(user_config.get("cascade", {}))
        calibrated = self._roles["student"].get("calibration") or {}
        self._policy = CascadePolicy(
            threshold=cascade.threshold
            if cascade.threshold is not None
            else calibrated.get("threshold", c.DEFAULT_THRESHOLD),
            signal=cascade.signal or Signal(calibrated.get("signal", c.DEFAULT_SIGNAL)),
            temperature=cascade.temperature or self._roles["student"]["temperature"],
        )
        as_calibrated = (
            calibrated.get("signal") == self._policy.signal.value
            and calibrated.get("threshold") == self._policy.threshold
        )
        self._metrics.expect_escalation(calibrated.get("expected_escalation_rate") if as_calibrated else None)
        # PSI compares like with like: only when the live signal is the one the reference was taken with.
        same_signal = calibrated.get("signal") == self._policy.signal.value
        self._metrics.configure(
            student_dollars_per_hour=cost.student_dollars_per_hour,
            teacher_dollars_per_hour=cost.teacher_dollars_per_hour,
            reference=self._drift_reference if same_signal else None,
            window=drift.window,
            min_samples=drift.min_samples,
        )

    def _configure_traffic_log(self, settings: TrafficLogSettings) -> None:
        """(Re)open the traffic-log writer when its settings change; the old one flushes and closes."""
        if settings == self._traffic_log_settings:
            return
        if self._traffic_log is not None:
            self._traffic_log.close()
            self._traffic_log = None
        self._traffic_log_settings = settings
        if settings.path:
            self._traffic_log = TrafficLogWriter(
                settings.path,
                self._labels,
                text_policy=settings.keep_text,
                salt=os.environ.get(settings.salt_env, ""),
                flush_interval_s=settings.flush_interval_s,
                max_rows_per_shard=settings.max_rows_per_shard,
                max_buffered=settings.max_buffered,
                retention_days=settings.retention_days,
            )

    def _log(self, request_id: str, reason: Any, text: str, student_probs: Any, teacher_logits: Any) -> None:
        writer = self._traffic_log
        if writer is None:
            return
        writer.record(
            TrafficRecord(
                request_id=request_id,
                time=time.time(),
                reason=reason,
                text=text,
                student_label=self._labels[int(np.argmax(student_probs))] if student_probs is not None else None,
                student_probs=student_probs.tolist() if student_probs is not None else None,
                teacher_logits=teacher_logits.tolist() if teacher_logits is not None else None,
                student_version=self._versions["student"],
                teacher_version=self._versions["teacher"],
            )
        )
        self._metrics.record_traffic_log(writer.written, writer.dropped)

    def _log_outcome(self, request_id: str, texts: list[str], route: str, outcome: CascadeOutcome) -> None:
        """Every text the teacher answered, and a sampled share of the others, go to the traffic log."""
        if self._traffic_log is None or self._traffic_log_settings is None:
            return
        probs = outcome.student_probabilities
        reason = "forced" if route == "teacher" else "escalation"
        if outcome.teacher_logits is not None:
            for row, logits in zip(outcome.teacher_rows, outcome.teacher_logits, strict=True):
                self._log(request_id, reason, texts[row], probs[row] if probs is not None else None, logits)
        rate = self._traffic_log_settings.sample_rate
        if probs is not None and rate > 0:
            for row, result in enumerate(outcome.results):
                if result.served_by == "student" and self._random.random() < rate:
                    self._log(request_id, "sampled", texts[row], probs[row], None)

    def __del__(self) -> None:
        """Ray Serve calls this when the replica shuts down: write what the traffic log still holds."""
        if getattr(self, "_traffic_log", None) is not None:
            self._traffic_log.close()  # type: ignore[union-attr]

    async def _call(self, role: str, texts: list[str]) -> tuple[np.ndarray, float]:
        """Send ``texts`` to a role in chunks that fit its batch, concurrently; map Ray's errors.

        Returns the logits and the compute seconds they used on the role's replicas.
        """
        size = self._roles[role]["max_batch_size"]
        local = self._local.get(role)
        call = local.logits if local is not None else self._handles[role].logits.remote
        try:
            parts = await asyncio.gather(*(call(texts[i : i + size]) for i in range(0, len(texts), size)))
        except BackPressureError as error:
            raise Overloaded(f"the {role} is at its queue limit; retry shortly") from error
        return np.concatenate([logits for logits, _ in parts], axis=0), sum(seconds for _, seconds in parts)

    async def _seed_teacher_speed(self) -> None:
        """Before the teacher has run, price its texts by what its warm-up measured."""
        if self._metrics.teacher_seconds_per_text is None:
            info = await self._handles["teacher"].info.remote()
            if self._metrics.teacher_seconds_per_text is None:
                self._metrics.teacher_seconds_per_text = float(info["seconds_per_text"])

    def _maybe_shadow(self, request_id: str, texts: list[str], labels: list[str], probs: list[Any]) -> None:
        """Sample the student's answers for a shadow call to the teacher; never waits, never queues."""
        rate = self._shadow.rate
        if rate <= 0.0:
            return
        sampled = [i for i in range(len(texts)) if self._random.random() < rate]
        if not sampled:
            return
        if len(self._shadow_tasks) >= self._shadow.max_in_flight:
            self._metrics.record_shadow("dropped", texts=len(sampled))
            return
        task = asyncio.create_task(
            self._shadow_call(
                request_id, [texts[i] for i in sampled], [labels[i] for i in sampled], [probs[i] for i in sampled]
            )
        )
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

    async def _shadow_call(
        self, request_id: str, texts: list[str], student_labels: list[str], student_probs: list[Any]
    ) -> None:
        try:
            logits, seconds = await self._call("teacher", texts)
        except Overloaded:
            self._metrics.record_shadow("dropped", texts=len(texts))
            return
        except Exception:  # a shadow failure must never surface: it is counted and logged
            logger.warning("shadow call to the teacher failed", exc_info=True)
            self._metrics.record_shadow("failed", texts=len(texts))
            return
        teacher_labels = [self._labels[int(i)] for i in np.argmax(logits, axis=1)]
        for text, probs, row in zip(texts, student_probs, logits, strict=True):
            self._log(request_id, "shadow", text, probs, row)
        agree = sum(1 for a, b in zip(student_labels, teacher_labels, strict=True) if a == b)
        if agree:
            self._metrics.record_shadow("agree", seconds * agree / len(texts), agree)
        if agree < len(texts):
            self._metrics.record_shadow("disagree", seconds * (len(texts) - agree) / len(texts), len(texts) - agree)

    @app.post(
        "/v1/classify",
        response_model=ClassifyResponse,
        responses=_ERROR_RESPONSES,
        openapi_extra=_CLASSIFY_OPENAPI,
    )
    async def classify(self, request: Request) -> dict[str, Any]:
        """Classify one text or a list of texts; the cascade decides who answers unless ``route`` says."""
        try:
            answer = await self._classify(request)
        except Exception as error:
            self._metrics.record_response(error_response(error)[0])
            raise  # the middleware turns it into the error body
        self._metrics.record_response(200)
        return answer

    async def _classify(self, request: Request) -> dict[str, Any]:
        limits = self._limits
        check_body_size(request.headers.get("content-length"), limits)
        body = bytearray()
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > limits.max_body_bytes:
                break
        parsed = parse_classify_request(bytes(body), limits)
        started = time.perf_counter()
        usage = RequestUsage()
        await self._seed_teacher_speed()

        async def student(texts: list[str]) -> np.ndarray:
            logits, usage.student_seconds = await self._call("student", texts)
            return logits

        async def teacher(texts: list[str]) -> np.ndarray:
            logits, usage.teacher_seconds = await self._call("teacher", texts)
            return logits

        outcome = await run_cascade(
            parsed.texts,
            parsed.route,
            policy=self._policy,
            labels=self._labels,
            teacher_temperature=self._roles["teacher"]["temperature"],
            student=student,
            teacher=teacher,
        )
        served_by = [result.served_by for result in outcome.results]
        path = "forced" if parsed.route == "teacher" else "escalated" if outcome.teacher_rows else "student"
        self._metrics.record_request(
            served_by=served_by,
            path=path,
            duration_s=time.perf_counter() - started,
            student_confidence=outcome.student_confidence,
            usage=usage,
        )
        request_id = request.headers.get("x-request-id", "")
        self._log_outcome(request_id, parsed.texts, parsed.route, outcome)
        answered = [i for i, who in enumerate(served_by) if who == "student"]
        probs = outcome.student_probabilities
        if answered and self._shadow.rate > 0 and probs is not None:
            self._maybe_shadow(
                request_id,
                [parsed.texts[i] for i in answered],
                [outcome.results[i].label for i in answered],
                [probs[i] for i in answered],
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
            if role in self._local:
                roles[role] = "ready"  # loaded and warmed up in this process before it took traffic
                continue
            try:
                await asyncio.wait_for(handle.info.remote(), c.READINESS_PROBE_TIMEOUT_S)
                roles[role] = "ready"
            except Exception:  # noqa: BLE001 - any failure means "not ready", and says which role
                roles[role] = "not ready"
        ready = all(state == "ready" for state in roles.values())
        return JSONResponse({"status": "ready" if ready else "not ready", "roles": roles}, 200 if ready else 503)


def _calibration_summary(ref: ModelRef) -> dict[str, Any] | None:
    calibration = ref.manifest.calibration if ref.manifest is not None else None
    if not calibration:
        return None
    expected = (calibration.get("expected") or {}).get("chosen") or {}
    return {
        "signal": calibration["signal"],
        "threshold": calibration["threshold"],
        "expected_escalation_rate": expected.get("escalation_rate"),
    }


def _role_summary(ref: ModelRef, settings: ModelSettings) -> dict[str, Any]:
    return {
        "model": ref.location,
        "version": ref.version,
        "labels": list(ref.labels),
        "temperature": ref.temperature,
        "calibration": _calibration_summary(ref),
        "backend": "onnx" if settings.backend == "onnx" or (settings.backend == "auto" and ref.has_onnx) else "torch",
        "device": settings.device,
        "max_batch_size": settings.batching.max_batch_size,
        "placement": "ingress" if settings.colocate else "deployment",
    }


def _drift_reference(ref: ModelRef) -> dict[str, list[float]] | None:
    calibration = ref.manifest.calibration if ref.manifest is not None else None
    reference = (calibration or {}).get("reference_confidence")
    return dict(reference) if reference else None


def gateway_user_config(config: GatewayConfig, refs: dict[str, ModelRef] | None = None) -> dict[str, Any]:
    """What the ingress applies live (its ``user_config``): settings, and the models in service."""
    refs = refs or {role: resolve_model(getattr(config, role).model) for role in ROLES}
    return {
        "roles": {role: _role_summary(refs[role], getattr(config, role)) for role in ROLES},
        "drift_reference": _drift_reference(refs["student"]),
        "cascade": config.cascade.model_dump(mode="json"),
        "limits": config.limits.model_dump(),
        "cost": config.cost.model_dump(),
        "shadow": config.shadow.model_dump(),
        "drift": config.drift.model_dump(),
        "traffic_log": config.traffic_log.model_dump(),
    }


def build_app(config: GatewayConfig) -> serve.Application:
    """Resolve both models (checksums, same labels) and bind the application; fails before deploying."""
    refs = {role: resolve_model(getattr(config, role).model) for role in ROLES}
    check_same_labels(refs["student"], refs["teacher"])
    # @serve.deployment turned both classes into Deployments; mypy still sees the classes.
    replica, gateway = cast(Deployment, ModelReplica), cast(Deployment, Gateway)
    colocated = config.student.colocate
    # Model folders travel in user_config, never in constructor arguments: a promotion then changes
    # only user_config, which Ray Serve applies in place (reconfigure) instead of rolling replicas.
    handles = {
        role: replica.options(
            **getattr(config, role).deployment.ray_options(role), user_config={"model": refs[role].location}
        ).bind(role, getattr(config, role).model_dump())
        for role in ROLES
        if not (role == "student" and colocated)
    }
    ingress = gateway.options(**config.ingress.ray_options("gateway"), user_config=gateway_user_config(config, refs))
    return ingress.bind(handles.get("student"), handles["teacher"], config.student.model_dump() if colocated else None)


def build_direct_student_app(config: GatewayConfig) -> serve.Application:
    """The student's deployment alone as an HTTP app (for measuring the router's overhead)."""
    replica = cast(Deployment, ModelReplica)
    options = config.student.deployment.ray_options("student-direct")
    location = resolve_model(config.student.model).location
    return replica.options(**options, user_config={"model": location}).bind("student", config.student.model_dump())


__all__ = ["Gateway", "ModelReplica", "build_app", "build_direct_student_app", "gateway_user_config"]

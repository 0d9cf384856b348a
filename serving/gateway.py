"""The router's work, free of HTTP: validate, run the cascade, account for it, log it, shadow it.

``Gateway`` is what each ingress replica runs. ``serving.http`` puts it behind FastAPI routes and
Ray Serve's ingress; nothing here knows about either, beyond the model handles it is given.
``reconfigure`` applies the live settings (``cascade``, ``limits``, ``cost``, ``shadow``, ``drift``,
``traffic_log``) and the models in service, as Ray Serve's ``user_config``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from typing import Any

import numpy as np
from ray.serve.exceptions import BackPressureError

from serving.artifact import Calibration
from serving.cascade import CascadeOutcome, run_cascade
from serving.config import (
    CascadeSettings,
    CostSettings,
    DriftSettings,
    LimitSettings,
    ModelSettings,
    ShadowSettings,
    TrafficLogSettings,
)
from serving.errors import Overloaded
from serving.metrics import GatewayMetrics, RequestUsage
from serving.policy import PolicyInForce, policy_in_force
from serving.replica import ModelRunner, swap_runner
from serving.schemas import check_body_size, parse_classify_request
from serving.traffic_log import TrafficLogWriter, TrafficRecord
from serving.vocabulary import ROLES, LogReason, Route, request_path, teacher_reason

logger = logging.getLogger("cascade.gateway")


class Gateway:
    """The router: validate, run the cascade, answer.

    Holds no model, except a student with ``colocate: true``: then the student runs in this process
    (``colocated_student`` is its settings) and a student answer costs no handle hop.
    """

    def __init__(
        self,
        student: Any | None,
        teacher: Any,
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
            self._local["student"] = await swap_runner(current, "student", self._colocated, roles["student"]["model"])
        self._roles = roles
        self._labels: list[str] = roles["student"]["labels"]
        self._versions = {role: roles[role]["version"] for role in ROLES}
        self._limits = LimitSettings.model_validate(user_config.get("limits", {}))
        self._shadow = ShadowSettings.model_validate(user_config.get("shadow", {}))
        cost = CostSettings.model_validate(user_config.get("cost", {}))
        drift = DriftSettings.model_validate(user_config.get("drift", {}))
        self._configure_traffic_log(TrafficLogSettings.model_validate(user_config.get("traffic_log", {})))
        stored = user_config.get("calibration")
        self._in_force: PolicyInForce = policy_in_force(
            CascadeSettings.model_validate(user_config.get("cascade", {})),
            Calibration.model_validate(stored) if stored else None,
            roles["student"]["temperature"],
        )
        self._policy = self._in_force.policy
        self._metrics.expect_escalation(self._in_force.expected_escalation_rate)
        reference = self._in_force.drift_reference
        self._metrics.configure(
            student_dollars_per_hour=cost.student_dollars_per_hour,
            teacher_dollars_per_hour=cost.teacher_dollars_per_hour,
            reference=reference.model_dump() if reference is not None else None,
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

    def _log(self, request_id: str, reason: LogReason, text: str, student_probs: Any, teacher_logits: Any) -> None:
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

    def _log_outcome(self, request_id: str, texts: list[str], route: Route, outcome: CascadeOutcome) -> None:
        """Every text the teacher answered, and a sampled share of the others, go to the traffic log."""
        if self._traffic_log is None or self._traffic_log_settings is None:
            return
        probs = outcome.student_probabilities
        reason = teacher_reason(route)
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

    def record_response(self, status: int) -> None:
        self._metrics.record_response(status)

    @property
    def max_body_bytes(self) -> int:
        return self._limits.max_body_bytes

    def check_declared_size(self, content_length: str | None) -> None:
        """Reject by ``Content-Length`` before the body is read, when the client declares one."""
        check_body_size(content_length, self._limits)

    async def answer(self, body: bytes, request_id: str) -> dict[str, Any]:
        """Classify the texts of one request body; the cascade decides who answers unless ``route`` says."""
        parsed = parse_classify_request(body, self._limits)
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
        self._metrics.record_request(
            served_by=served_by,
            path=request_path(parsed.route, bool(outcome.teacher_rows)),
            duration_s=time.perf_counter() - started,
            student_confidence=outcome.student_confidence,
            usage=usage,
        )
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

    def describe(self) -> dict[str, Any]:
        """The models behind each role, and the cascade rule in force (``GET /v1/models``)."""
        return {
            "roles": self._roles,
            "cascade": {
                "signal": self._policy.signal.value,
                "threshold": self._policy.threshold,
                "temperature": self._policy.temperature,
                "learned_rule": None
                if self._policy.rule is None
                else {"target": self._policy.rule.target.value, "features": list(self._policy.rule.feature_names)},
                "source": self._in_force.source,
                "expected_escalation_rate": self._in_force.expected_escalation_rate,
            },
            "limits": self._limits.model_dump(),
        }

    async def readiness(self, probe_timeout_s: float) -> dict[str, str]:
        """Each role: ``ready`` when loaded and answering within ``probe_timeout_s``, else ``not ready``."""
        roles: dict[str, str] = {}
        for role, handle in self._handles.items():
            if role in self._local:
                roles[role] = "ready"  # loaded and warmed up in this process before it took traffic
                continue
            try:
                await asyncio.wait_for(handle.info.remote(), probe_timeout_s)
                roles[role] = "ready"
            except Exception:  # noqa: BLE001 - any failure means "not ready", and says which role
                roles[role] = "not ready"
        return roles


__all__ = ["Gateway"]

"""The router's work, free of HTTP: validate, run the cascade, account for it, log it, shadow it.

``Gateway`` is what each ingress replica runs. ``serving.ingress`` puts it behind FastAPI routes and
Ray Serve's ingress; nothing here knows about either, beyond the model handles it is given.
``reconfigure`` applies the live settings (``cascade``, ``limits``, ``resilience``, ``auth``, ``cost``,
``shadow``, ``drift``, ``traffic_log``) and the models in service, as Ray Serve's ``user_config``.

Every call to a model goes through ``serving.role_calls`` (breaker, timeout, one retry, service
errors). A role served from the registry is followed here too (``_follow``, ``serving.swap``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

from router.stages import StagePolicy
from serving import constants as c
from serving.artifact import Calibration
from serving.auth import ANONYMOUS_CALLER, Authenticator, Caller
from serving.cascade import CascadeOutcome, run_cascade
from serving.config import (
    AuthSettings,
    CascadeSettings,
    CostSettings,
    DriftSettings,
    LimitSettings,
    ModelSettings,
    ResilienceSettings,
    ShadowSettings,
    TrafficLogSettings,
)
from serving.errors import ArtifactError, ModelTimeout, Overloaded
from serving.metrics import GatewayMetrics, RequestUsage
from serving.model_ref import model_summary, resolve_model
from serving.policy import PolicyInForce, policy_in_force
from serving.replica import ModelRunner, swap_runner
from serving.role_calls import RoleCalls
from serving.schemas import check_body_size, parse_classify_request
from serving.swap import RegistryWatcher, watch
from serving.traffic_log import TrafficLogWriter, TrafficRecord
from serving.vocabulary import ROLES, LogReason, Route, request_path, teacher_reason

logger = logging.getLogger("cascade.gateway")


def _public_name(location: str) -> str:
    """What ``/v1/models`` shows of a model's location: a folder's name, never the path on the server."""
    return Path(location).name if os.path.isabs(location) else location


def _describe_stage(stage: StagePolicy) -> dict[str, Any]:
    """What ``/v1/models`` shows of the middle stage's rule."""
    return {
        "kind": stage.kind,
        "threshold": stage.threshold,
        "temperature": stage.temperature,
        "learned_rule": None
        if stage.rule is None
        else {"target": stage.rule.target.value, "features": list(stage.rule.feature_names)},
    }


def _rule_in_force(user_config: dict[str, Any]) -> PolicyInForce:
    """The cascade rule that ``user_config`` describes (its ``cascade`` settings, the student's calibration)."""
    roles = user_config["roles"]
    stored = user_config.get("calibration")
    return policy_in_force(
        CascadeSettings.model_validate(user_config.get("cascade", {})),
        Calibration.model_validate(stored) if stored else None,
        roles["student"]["temperature"],
        roles["middle"]["version"] if "middle" in roles else None,
    )


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
        middle: Any | None = None,
        *,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self._handles: dict[str, Any] = {"student": student, "teacher": teacher}
        if middle is not None:
            self._handles["middle"] = middle
        self._local: dict[str, ModelRunner] = {}
        self._colocated = ModelSettings.model_validate(colocated_student) if colocated_student else None
        self._metrics = metrics or GatewayMetrics()
        self._shadow_tasks: set[asyncio.Task[None]] = set()
        self._random = random.Random()
        self._traffic_log: TrafficLogWriter | None = None
        self._traffic_log_settings: TrafficLogSettings | None = None
        self._resilience: ResilienceSettings | None = None
        self._calls = RoleCalls(self._handles, self._local, self._metrics)
        self._auth = Authenticator()
        self._watchers: dict[str, RegistryWatcher] = {}
        # Ray Serve calls reconfigure(user_config) right after construction, before any request.

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply the live settings and the models in service (on start, a config change or a promotion)."""
        roles: dict[str, dict[str, Any]] = user_config["roles"]
        self._user_config = user_config
        if self._colocated is not None:
            current = self._local.get("student")
            self._local["student"] = await swap_runner(current, "student", self._colocated, roles["student"]["model"])
        self._roles = roles
        self._labels: list[str] = roles["student"]["labels"]
        self._versions = {role: roles[role]["version"] for role in ROLES if role in roles}
        self._limits = LimitSettings.model_validate(user_config.get("limits", {}))
        self._resilience = ResilienceSettings.model_validate(user_config.get("resilience", {}))
        self._calls.configure(self._resilience, roles)
        auth = user_config.get("auth")
        self._auth.configure(AuthSettings.model_validate(auth) if isinstance(auth, dict) else None)
        self._shadow = ShadowSettings.model_validate(user_config.get("shadow", {}))
        cost = CostSettings.model_validate(user_config.get("cost", {}))
        drift = DriftSettings.model_validate(user_config.get("drift", {}))
        self._configure_traffic_log(TrafficLogSettings.model_validate(user_config.get("traffic_log", {})))
        self._in_force: PolicyInForce = _rule_in_force(user_config)
        self._policy = self._in_force.policy
        self._metrics.expect_escalation(self._in_force.expected_escalation_rate)
        reference = self._in_force.drift_reference
        poll_s = float(user_config.get("reload", {}).get("poll_s", c.DEFAULT_REGISTRY_POLL_S))
        for role, summary in roles.items():
            watch(self._watchers, role, summary.get("reference"), summary["model"], poll_s, self._follower(role))
        self._metrics.configure(
            student_dollars_per_hour=cost.student_dollars_per_hour,
            middle_dollars_per_hour=cost.middle_dollars_per_hour,
            teacher_dollars_per_hour=cost.teacher_dollars_per_hour,
            reference=reference.model_dump() if reference is not None else None,
            window=drift.window,
            min_samples=drift.min_samples,
        )

    def _follower(self, role: str) -> Callable[[str], Awaitable[None]]:
        async def follow(location: str) -> None:
            await self._follow(role, location)

        return follow

    async def _follow(self, role: str, location: str) -> None:
        """A role's registry pointer moved: take the new model into this ingress's view of the roles.

        Checked first (labels, checksums, and that the student's rule fits the roles: a chain's middle
        model), then applied once the role's replicas answer with the new version, so that a request
        is never judged by one model's calibration and answered by another's logits for long.
        """
        ref = await asyncio.to_thread(resolve_model, location)
        if list(ref.labels) != list(self._labels):
            raise ArtifactError(f"{ref.version} predicts other labels than the {role} in service")
        roles = {**self._roles, role: {**self._roles[role], **model_summary(ref)}}
        user_config = {**self._user_config, "roles": roles}
        if role == "student":
            calibration = ref.manifest.calibration if ref.manifest is not None else None
            user_config["calibration"] = calibration.model_dump(mode="json") if calibration is not None else None
        _rule_in_force(user_config)  # raises before anything changes if the rule does not fit the roles
        if role not in self._local:
            await self._wait_for_version(role, ref.version)
        await self.reconfigure(user_config)

    async def _wait_for_version(self, role: str, version: str) -> None:
        """Until the role's replicas answer with ``version`` (they follow the same pointer), at most a while."""
        deadline = time.monotonic() + c.SWAP_CATCH_UP_S
        while time.monotonic() < deadline:
            try:
                info = await asyncio.wait_for(self._handles[role].info.remote(), c.READINESS_PROBE_TIMEOUT_S)
                if info["version"] == version:
                    return
            except Exception:  # noqa: BLE001 - a replica busy loading answers later
                pass
            await asyncio.sleep(0.5)
        logger.warning("%s replicas still not on %s after %g s: switching anyway", role, version, c.SWAP_CATCH_UP_S)

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

    async def _seed_teacher_speed(self) -> None:
        """Before the teacher has run, price its texts by what its warm-up measured (skipped while it fails)."""
        if self._metrics.teacher_seconds_per_text is not None or self._calls.breakers["teacher"].state != "closed":
            return
        try:
            info = await asyncio.wait_for(self._handles["teacher"].info.remote(), c.READINESS_PROBE_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - pricing waits for the teacher's first answer instead
            return
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
        if self._calls.breakers["teacher"].state != "closed":
            self._metrics.record_shadow("dropped", texts=len(texts))
            return
        try:
            logits, seconds = await self._calls.call("teacher", texts)
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

    def identify(self, authorization: str | None) -> Caller:
        """Who calls (``Unauthorized`` when keys are on and this is not one of them)."""
        return self._auth.identify(authorization)

    async def answer(self, body: bytes, request_id: str, caller: Caller = ANONYMOUS_CALLER) -> dict[str, Any]:
        """Classify the texts of one request body; the cascade decides who answers unless ``route`` says."""
        assert self._resilience is not None
        caller.admit_request()
        parsed = parse_classify_request(body, self._limits)
        if parsed.route == "teacher":
            caller.check_forced_teacher()
        timeout = self._resilience.request_timeout_s
        try:
            async with asyncio.timeout(timeout):
                return await self._answer(parsed.texts, parsed.route, request_id, caller, time.monotonic() + timeout)
        except TimeoutError:
            raise ModelTimeout(
                f"the request did not finish within {timeout:g} s (resilience.request_timeout_s)"
            ) from None

    async def _answer(
        self, texts: list[str], route: Route, request_id: str, caller: Caller, deadline: float
    ) -> dict[str, Any]:
        assert self._resilience is not None
        started = time.perf_counter()
        usage = RequestUsage()
        await self._seed_teacher_speed()

        async def student(batch: list[str]) -> np.ndarray:
            logits, usage.student_seconds = await self._calls.call("student", batch, deadline)
            return logits

        async def middle(batch: list[str]) -> np.ndarray:
            logits, usage.middle_seconds = await self._calls.call("middle", batch, deadline)
            return logits

        async def teacher(batch: list[str]) -> np.ndarray:
            caller.take_teacher_texts(len(batch))
            logits, usage.teacher_seconds = await self._calls.call("teacher", batch, deadline)
            return logits

        outcome = await run_cascade(
            texts,
            route,
            policy=self._policy,
            labels=self._labels,
            teacher_temperature=self._roles["teacher"]["temperature"],
            student=student,
            teacher=teacher,
            degrade=self._resilience.on_teacher_failure == "degrade",
            middle=middle if self._in_force.middle is not None else None,
            middle_policy=self._in_force.middle,
        )
        served_by = [result.served_by for result in outcome.results]
        self._metrics.record_request(
            served_by=served_by,
            path=request_path(route, bool(outcome.teacher_rows or outcome.middle_rows)),
            duration_s=time.perf_counter() - started,
            student_confidence=outcome.student_confidence,
            usage=usage,
            middle_confidence=outcome.middle_confidence,
        )
        self._metrics.record_key(caller.name, usage.teacher_seconds)
        if outcome.degraded_reason is not None:
            self._metrics.record_degraded(outcome.degraded_reason, len(outcome.degraded_rows))
        self._log_outcome(request_id, texts, route, outcome)
        answered = [i for i, who in enumerate(served_by) if who == "student"]
        probs = outcome.student_probabilities
        if answered and self._shadow.rate > 0 and probs is not None and outcome.degraded_reason is None:
            self._maybe_shadow(
                request_id,
                [texts[i] for i in answered],
                [outcome.results[i].label for i in answered],
                [probs[i] for i in answered],
            )
        return {
            # The results' fields as they are (``vars``): built with ``model_construct`` from values of the
            # right types, a ``model_dump`` of each (a score per label) only copied them, at a cost per text.
            "results": [vars(result) for result in outcome.results],
            "model_versions": self._versions,
        }

    def describe(self) -> dict[str, Any]:
        """The models behind each role, and the cascade rule in force (``GET /v1/models``)."""
        middle = self._in_force.middle
        return {
            "roles": {
                role: {
                    **{key: value for key, value in summary.items() if key != "reference"},  # a server path
                    "model": _public_name(summary["model"]),
                }
                for role, summary in self._roles.items()
            },
            "cascade": {
                "signal": self._policy.signal.value,
                "threshold": self._policy.threshold,
                "temperature": self._policy.temperature,
                "learned_rule": None
                if self._policy.rule is None
                else {"target": self._policy.rule.target.value, "features": list(self._policy.rule.feature_names)},
                "source": self._in_force.source,
                "expected_escalation_rate": self._in_force.expected_escalation_rate,
                "stages": [role for role in ROLES if role in self._roles],
                "middle": None if middle is None else _describe_stage(middle),
            },
            "limits": self._limits.model_dump(),
            "resilience": {
                **(self._resilience.model_dump() if self._resilience is not None else {}),
                "breakers": {
                    role: breaker.state for role, breaker in self._calls.breakers.items() if role in self._roles
                },
            },
            "auth": {"enabled": self._auth.enabled},
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

"""One role's model in a process: load, warm up, batch texts, time every batch, swap in place.

``ModelRunner`` is the model; ``ModelReplica`` is a role's own Ray Serve deployment around one
(the default placement). A student with ``colocate: true`` runs a ``ModelRunner`` inside the ingress
instead (``serving.gateway``). Which model folder a replica runs is its ``user_config``, so that a
promotion reaches it in place with no restart: the swap's mechanism lives here, the registry watcher
that triggers it in ``serving.swap`` (each replica follows its own role's pointer).
"""

# No ``from __future__ import annotations``: Ray Serve's HTTP path of ``ModelReplica.__call__``
# (the direct-student endpoint) hands FastAPI the real ``Request`` annotation.
import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from router import CascadePolicy, Signal
from serving import constants as c
from serving.backends import load_backend
from serving.config import ModelSettings
from serving.metrics import ReplicaMetrics
from serving.model_ref import check_same_labels, resolve_model
from serving.swap import RegistryWatcher, watch
from serving.vocabulary import Role

logger = logging.getLogger("cascade.replica")
WARM_UP_TEXTS = 8


Call = tuple[list[str], float | None]
"""One caller's texts and its deadline (``time.time()`` seconds; None: none)."""


def _count_texts(calls: list[Call]) -> int:
    return sum(len(texts) for texts, _ in calls)


class DeadlinePassed(TimeoutError):
    """The caller stopped waiting before the batch ran: its texts are not computed."""


CallResult = tuple[np.ndarray, float] | Exception
"""One call's logits and the compute seconds they used, or the error its own texts caused."""


async def answer_batch(model: Callable[[list[str]], np.ndarray], calls: list[list[str]]) -> list[CallResult]:
    """One model call for every call in a batch; should it fail, each call on its own.

    A text that makes the model raise (a tokenizer's edge case) then fails only the call that sent it;
    the others in the batch are answered. The model runs off the event loop, so the process keeps
    accepting calls for the next batch meanwhile.
    """
    flat = [text for texts in calls for text in texts]
    started = time.perf_counter()
    try:
        logits = await asyncio.to_thread(model, flat)
    except Exception:
        if len(calls) == 1:
            raise
        logger.warning("a batch of %d calls failed; answering each call on its own", len(calls))
        return [await _alone(model, texts) for texts in calls]
    seconds_per_text = (time.perf_counter() - started) / len(flat)
    bounds = np.cumsum([len(texts) for texts in calls])[:-1]
    return [(part, seconds_per_text * len(part)) for part in np.split(logits, bounds)]


async def _alone(model: Callable[[list[str]], np.ndarray], texts: list[str]) -> CallResult:
    started = time.perf_counter()
    try:
        logits = await asyncio.to_thread(model, texts)
    except Exception as error:  # noqa: BLE001 - handed to this call's caller, who raises it
        return error
    return logits, time.perf_counter() - started


class ModelRunner:
    """One role's model in this process: load, warm up, batch calls by text count, time every batch.

    Used by ``ModelReplica`` (a role's own deployment) and, for a student with ``colocate: true``, by
    the ingress itself. ``@serve.batch`` works on any async method, not only a deployment's.
    """

    def __init__(self, role: Role, settings: ModelSettings, location: str | None = None) -> None:
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

    async def logits(self, texts: list[str], deadline: float | None = None) -> tuple[np.ndarray, float]:
        """Logits for ``texts`` and the compute seconds they used (their share of the batch).

        ``deadline`` (``time.time()`` seconds) is when the caller stops waiting: a call still queued
        then is dropped without running the model, so a backlog (a replica that was stopped, an
        overload) is not computed for callers that are gone.
        """
        self._metrics.queued(len(texts))
        try:
            result = await self._batched((texts, deadline))
        finally:
            self._metrics.queued(-len(texts))
        if isinstance(result, Exception):
            raise result  # this call's texts failed the model, or its deadline passed; the others were answered
        return result

    @serve.batch(max_batch_size=c.DEFAULT_MAX_BATCH_SIZE, batch_size_fn=_count_texts)
    async def _batched(self, calls: list[Call]) -> list[CallResult]:
        return await self.answer_live(calls)

    async def answer_live(self, calls: list[Call]) -> list[CallResult]:
        """Answer the calls whose deadline has not passed; the others get ``DeadlinePassed``."""
        now = time.time()
        live = [i for i, (_, deadline) in enumerate(calls) if deadline is None or deadline > now]
        results: list[CallResult] = [DeadlinePassed("the caller's deadline passed before the batch ran")] * len(calls)
        if live:
            self._metrics.batch(sum(len(calls[i][0]) for i in live))
            answered = await answer_batch(self.backend.logits, [calls[i][0] for i in live])
            for i, result in zip(live, answered, strict=True):
                results[i] = result
        return results

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


async def swap_runner(
    current: ModelRunner | None, role: Role, settings: ModelSettings, location: str | None
) -> ModelRunner:
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

    Which model folder it runs is its ``user_config`` (``{"model": <resolved folder>, "reference":
    <registry:…>, "poll_s": …}``). A promotion or rollback reaches it by its own registry watcher (or
    a new ``user_config``): the new model is loaded and warmed up beside the old one, then swapped in;
    calls already in a batch finish on the old one. No replica restarts and no request fails.
    """

    def __init__(self, role: Role, settings: dict[str, Any]) -> None:
        self._role = role
        self._settings = ModelSettings.model_validate(settings)
        self._runner: ModelRunner | None = None
        self._watchers: dict[str, RegistryWatcher] = {}

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """The model in ``user_config``; with a ``registry:`` reference, this replica also follows its pointer."""
        self._runner = await swap_runner(self._runner, self._role, self._settings, user_config.get("model"))
        poll_s = float(user_config.get("poll_s", c.DEFAULT_REGISTRY_POLL_S))
        watch(self._watchers, self._role, user_config.get("reference"), self.runner.ref.location, poll_s, self._follow)

    async def _follow(self, location: str) -> None:
        """The pointer moved: load the new model beside the old one, then serve it (same labels only)."""
        new = await asyncio.to_thread(resolve_model, location)
        check_same_labels(self.runner.ref, new)
        self._runner = await swap_runner(self._runner, self._role, self._settings, location)

    @property
    def runner(self) -> ModelRunner:
        if self._runner is None:  # Ray Serve calls reconfigure before the first request
            raise RuntimeError("the replica has no model: its user_config never arrived")
        return self._runner

    async def logits(self, texts: list[str], deadline: float | None = None) -> tuple[np.ndarray, float]:
        return await self.runner.logits(texts, deadline)

    def info(self) -> dict[str, Any]:
        """The runner's description, and this replica's process id (for operators and fault drills)."""
        return {**self.runner.info(), "pid": os.getpid()}

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


__all__ = ["ModelReplica", "ModelRunner", "swap_runner"]

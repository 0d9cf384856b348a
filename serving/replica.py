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
from typing import Any

import numpy as np
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from router import CascadePolicy, Signal
from serving import constants as c
from serving.backends import load_backend
from serving.coalescing import Coalescer
from serving.config import ModelSettings
from serving.metrics import ReplicaMetrics
from serving.model_ref import check_same_labels, resolve_model
from serving.swap import RegistryWatcher, watch
from serving.vocabulary import Role

logger = logging.getLogger("cascade.replica")
WARM_UP_TEXTS = 8


class ModelRunner:
    """One role's model in this process: load, warm up, batch calls by text count, time every batch.

    Used by ``ModelReplica`` (a role's own deployment) and, for a student with ``colocate: true``, by
    the ingress itself. Batches are ``serving.coalescing``'s: one model call at a time, and the calls
    that arrive meanwhile ride in the next (up to ``batching.max_batch_size`` texts, after at most
    ``batching.batch_wait_timeout_s`` for company), as Ray Serve's ``@serve.batch`` would group them.
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
        # Warm up, so that "constructed" means "has answered once" (readiness relies on it); the timed
        # second pass seeds the ingress's estimate of what a text costs on this role.
        self.backend.logits(["warm up"] * WARM_UP_TEXTS)
        started = time.perf_counter()
        self.backend.logits(["warm up"] * WARM_UP_TEXTS)
        self.seconds_per_text = (time.perf_counter() - started) / WARM_UP_TEXTS
        batching = settings.batching
        self.on_event_loop = runs_on_event_loop(batching.run_on, self.seconds_per_text, batching.max_batch_size)
        wait_s = batching.batch_wait_timeout_s
        if self.on_event_loop and wait_s <= 0:
            wait_s = c.EVENT_LOOP_GATHER_S
        self._batches = Coalescer(self._run_batch, max_texts=batching.max_batch_size, in_flight=1, wait_s=wait_s)
        logger.info(
            "%s %s: batches run on %s (a full batch of %d took about %.1f ms at warm-up)",
            role,
            self.ref.version,
            self.batches_run_on,
            batching.max_batch_size,
            1000 * self.seconds_per_text * batching.max_batch_size,
        )
        self._metrics = ReplicaMetrics(role, self.ref.version)

    async def logits(self, texts: list[str], deadline: float | None = None) -> tuple[np.ndarray, float]:
        """Logits for ``texts`` and the compute seconds they used (their share of the batch).

        ``deadline`` (``time.time()`` seconds) is when the caller stops waiting: a call still queued
        then is dropped without running the model, so a backlog (a replica that was stopped, an
        overload) is not computed for callers that are gone.
        """
        self._metrics.queued(len(texts))
        try:
            return await self._batches.call(texts, deadline)
        finally:
            self._metrics.queued(-len(texts))

    async def _run_batch(self, texts: list[str], _deadline: float | None) -> tuple[np.ndarray, float]:
        """One model call: in a worker thread (the process keeps accepting the next batch's calls
        meanwhile) or, for a model fast enough, right on the event loop (``batching.run_on``).

        Late callers never reach it: the batcher answers them ``DeadlinePassed``.
        Should it fail, the batcher retries each caller's texts alone, so that a text that makes the
        model raise (a tokenizer's edge case) fails only the call that sent it.
        """
        self._metrics.batch(len(texts))
        started = time.perf_counter()
        if self.on_event_loop:
            logits = self.backend.logits(texts)
        else:
            logits = await asyncio.to_thread(self.backend.logits, texts)
        return logits, time.perf_counter() - started

    @property
    def batches_run_on(self) -> str:
        return "event_loop" if self.on_event_loop else "worker_thread"

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
            "batches_run_on": self.batches_run_on,
        }


def runs_on_event_loop(run_on: str, seconds_per_text: float, max_batch_size: int) -> bool:
    """``batching.run_on``: ``auto`` keeps a model on the event loop when a full batch is that fast."""
    if run_on == "auto":
        return seconds_per_text * max_batch_size <= c.EVENT_LOOP_MAX_BATCH_S
    return run_on == "event_loop"


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

"""Every call from the router to a model, guarded: a circuit breaker per role, a timeout, one retry.

A breaker per role (``router.breaker``) refuses at once while the role is failing, a timeout cuts a
call that waits too long (the role's, or less when the request's deadline is nearer), a replica that
died is retried once, and each failure becomes one of ``serving.errors``' service errors, which the
cascade turns into a degraded answer or the ingress into a 503/504 with ``Retry-After``. Texts go in
chunks that fit the role's batch, each carrying its deadline to the replica; chunks for a remote role
from concurrent requests share calls (``serving.coalescing``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError

from router.breaker import CircuitBreaker
from serving.coalescing import Answer, Coalescer
from serving.config import ResilienceSettings
from serving.errors import ModelError, ModelTimeout, ModelUnavailable, Overloaded
from serving.metrics import GatewayMetrics
from serving.replica import ModelRunner
from serving.vocabulary import ROLES

logger = logging.getLogger("cascade.gateway")

_REPLICA_GONE = (RayActorError, ActorUnavailableError, ReplicaUnavailableError, DeploymentUnavailableError)
"""A replica died or cannot be reached: worth one retry (Ray routes it to another, or a new, replica)."""
_ATTEMPTS_WHEN_GONE = 2


class RoleCalls:
    """Calls to each role, by its Ray Serve handle or (a colocated student) its runner in this process.

    ``handles`` and ``local`` are the router's own dictionaries: a runner it swaps in is called next.
    """

    def __init__(self, handles: dict[str, Any], local: dict[str, ModelRunner], metrics: GatewayMetrics) -> None:
        self.handles, self.local, self._metrics = handles, local, metrics
        self.breakers: dict[str, CircuitBreaker] = {}
        self._resilience: ResilienceSettings | None = None
        self._batch_sizes: dict[str, int] = {}
        self._coalescers: dict[str, Coalescer] = {}

    def configure(self, settings: ResilienceSettings, roles: dict[str, dict[str, Any]]) -> None:
        """Timeouts, batch sizes and calls in flight apply at once; breakers start over only when their settings change.

        ``roles`` is the ingress's view of each role (``serving.application``'s role summary).
        """
        if self._resilience is None or settings.breaker != self._resilience.breaker:
            self.breakers = {role: CircuitBreaker(settings.breaker.failures, settings.breaker.open_s) for role in ROLES}
        self._resilience = settings
        self._batch_sizes = {role: summary["max_batch_size"] for role, summary in roles.items()}
        for role, summary in roles.items():
            in_flight = summary["calls_in_flight"]
            coalescer = self._coalescers.get(role)
            if coalescer is None:
                shared = (BackPressureError, *_REPLICA_GONE)  # about the call, not the texts: every caller gets it
                self._coalescers[role] = Coalescer(self._remote(role), self._batch_sizes[role], in_flight, shared)
            else:
                coalescer.max_texts, coalescer.in_flight = self._batch_sizes[role], in_flight

    def _remote(self, role: str) -> Callable[[list[str], float | None], Awaitable[Answer]]:
        async def send(texts: list[str], deadline: float | None) -> Answer:
            return await self.handles[role].logits.remote(texts, deadline)

        return send

    async def call(self, role: str, texts: list[str], deadline: float | None = None) -> tuple[np.ndarray, float]:
        """Send ``texts`` to a role, guarded (module docstring); its logits and the compute seconds they used."""
        assert self._resilience is not None
        breaker = self.breakers[role]
        if not breaker.allow():
            self._metrics.record_model_failure(role, "breaker_open")
            raise ModelUnavailable(
                f"the {role} is failing; its circuit breaker is open", retry_after_s=breaker.retry_after_s
            )
        role_timeout = getattr(self._resilience, f"{role}_timeout_s")
        budget = role_timeout if deadline is None else min(role_timeout, deadline - time.monotonic())
        try:
            # asyncio.timeout, not wait_for: wait_for wraps the call in a task of its own, and a task
            # per call was a visible share of the ingress's event loop at a thousand requests a second.
            async with asyncio.timeout(max(budget, 0.0)):
                result = await self._call_with_retry(role, texts, time.time() + budget)
        except TimeoutError:
            self._failed(role, "timeout")
            raise ModelTimeout(f"the {role} did not answer within {budget:.2f} s") from None
        except Overloaded:
            breaker.release_probe()  # a full queue says nothing about whether the model works
            self._metrics.record_model_failure(role, "overloaded")
            raise
        except _REPLICA_GONE:
            self._failed(role, "unavailable")
            logger.warning("the %s replica is gone", role, exc_info=True)
            raise ModelUnavailable(f"the {role} is not available; retry shortly") from None
        except asyncio.CancelledError:
            breaker.release_probe()
            raise
        except Exception:  # the model's code raised: logged here, the client gets no internals
            self._failed(role, "error")
            logger.error("the %s failed on a call", role, exc_info=True)
            raise ModelError(f"the {role} failed on this request") from None
        breaker.record_success()
        self._metrics.record_circuit(role, False)
        return result

    def _failed(self, role: str, failure: str) -> None:
        breaker = self.breakers[role]
        breaker.record_failure()
        self._metrics.record_model_failure(role, failure)
        self._metrics.record_circuit(role, breaker.state != "closed")

    async def _call_with_retry(self, role: str, texts: list[str], deadline: float) -> tuple[np.ndarray, float]:
        for attempt in range(1, _ATTEMPTS_WHEN_GONE + 1):
            try:
                return await self._call_once(role, texts, deadline)
            except _REPLICA_GONE:
                if attempt == _ATTEMPTS_WHEN_GONE:
                    raise
                logger.warning("a %s replica went away mid-call; retrying once", role)
        raise AssertionError("unreachable")

    async def _call_once(self, role: str, texts: list[str], deadline: float) -> tuple[np.ndarray, float]:
        """Send ``texts`` in chunks that fit the role's batch, concurrently; map back-pressure.

        ``deadline`` (``time.time()``) travels with each chunk: the replica drops it unrun if still queued then.
        """
        size = self._batch_sizes[role]
        local = self.local.get(role)
        call = local.logits if local is not None else self._coalescers[role].call
        try:
            if len(texts) <= size:  # one chunk: no tasks to gather
                parts = [await call(texts, deadline)]
            else:
                parts = await asyncio.gather(*(call(texts[i : i + size], deadline) for i in range(0, len(texts), size)))
        except BackPressureError as error:
            raise Overloaded(f"the {role} is at its queue limit; retry shortly") from error
        if len(parts) == 1:
            return parts[0]
        return np.concatenate([logits for logits, _ in parts], axis=0), sum(seconds for _, seconds in parts)


__all__ = ["RoleCalls"]

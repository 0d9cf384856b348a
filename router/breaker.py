"""A circuit breaker per model role: after repeated failures, stop waiting on a model that is down.

Pure state (a clock is passed in), so the gateway's fail-fast behaviour is unit-tested without Ray.

    closed ──(failures in a row)──▶ open ──(open_s elapsed)──▶ half_open
      ▲                                ▲                           │ one probe call at a time
      └──────────(probe succeeds)──────┼───────────────────────────┤
                                       └──────(probe fails)────────┘

While open, ``allow`` says no at once: the caller answers without the model (a degraded answer, or a
503 with ``Retry-After: retry_after_s``) instead of waiting for a timeout per request.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

BreakerState = Literal["closed", "open", "half_open"]
BREAKER_STATES: tuple[BreakerState, ...] = ("closed", "open", "half_open")


class CircuitBreaker:
    """Opens after ``failures`` consecutive failures; lets one probe through ``open_s`` later."""

    def __init__(self, failures: int, open_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if failures < 1 or open_s <= 0:
            raise ValueError(f"failures must be >= 1 and open_s > 0, got {failures} and {open_s}")
        self.failures = failures
        self.open_s = open_s
        self._clock = clock
        self._in_a_row = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return "closed"
        return "half_open" if self._clock() - self._opened_at >= self.open_s else "open"

    @property
    def retry_after_s(self) -> float:
        """Seconds until the next probe may run (0 when calls are allowed)."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self.open_s - (self._clock() - self._opened_at))

    def allow(self) -> bool:
        """May a call go to the model now? In half-open, yes for one probe at a time."""
        state = self.state
        if state == "closed":
            return True
        if state == "open" or self._probing:
            return False
        self._probing = True
        return True

    def record_success(self) -> None:
        self._in_a_row = 0
        self._opened_at = None
        self._probing = False

    def record_failure(self) -> None:
        """A failure or a timeout. A failed probe re-opens for another ``open_s``."""
        self._in_a_row += 1
        if self._probing or self._in_a_row >= self.failures:
            self._opened_at = self._clock()
        self._probing = False

    def release_probe(self) -> None:
        """A probe that ended without telling whether the model works (cancelled, shed): let another try."""
        self._probing = False


__all__ = ["BREAKER_STATES", "BreakerState", "CircuitBreaker"]

"""Per-key rate limits: token buckets refilled continuously, with the wait to quote in ``Retry-After``.

Pure state with an injected clock. One ``RateLimiter`` per limit (requests, teacher texts) per API
key, held by each ingress replica: with N ingress replicas a key gets up to N times its rate (the
README says so; a shared store would put a network hop on every request).
"""

from __future__ import annotations

import time
from collections.abc import Callable


class RateLimiter:
    """``per_minute`` units a minute, with bursts up to ``burst`` (default: one minute's worth)."""

    def __init__(self, per_minute: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic):
        if per_minute <= 0:
            raise ValueError(f"per_minute must be > 0, got {per_minute}")
        self.rate_per_s = per_minute / 60.0
        self.capacity = float(burst if burst is not None else per_minute)
        if self.capacity < 1:
            raise ValueError(f"burst must be >= 1, got {self.capacity}")
        self._clock = clock
        self._tokens = self.capacity
        self._updated = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate_per_s)
        self._updated = now

    def available(self) -> float:
        self._refill()
        return self._tokens

    def try_take(self, units: float = 1.0) -> bool:
        """Take ``units`` if they are all there; otherwise take nothing."""
        self._refill()
        if units <= self._tokens:
            self._tokens -= units
            return True
        return False

    def wait_s(self, units: float = 1.0) -> float:
        """Seconds until ``units`` would be there (for ``Retry-After``); inf if more than the burst."""
        if units > self.capacity:
            return float("inf")
        self._refill()
        return max(0.0, (units - self._tokens) / self.rate_per_s)


__all__ = ["RateLimiter"]

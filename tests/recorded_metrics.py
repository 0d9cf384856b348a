"""Metrics that keep what was recorded, for testing the gateway's bookkeeping without Ray's pipeline."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

from serving import metrics as m
from serving.metrics import GatewayMetrics, MetricSpec


class Recorded:
    """A metric that keeps what was recorded, by label set (the real ones are Ray's, tested live)."""

    def __init__(self, spec: MetricSpec) -> None:
        self.spec = spec
        self.values: dict[tuple[tuple[str, str], ...], float] = defaultdict(float)
        self.observations: list[float] = []
        self.observed: dict[tuple[tuple[str, str], ...], list[float]] = defaultdict(list)

    def _key(self, tags: dict[str, str] | None) -> tuple[tuple[str, str], ...]:
        tags = tags or {}
        assert set(tags) == set(self.spec.tag_keys), (self.spec.name, tags)
        for key, value in tags.items():
            if key in m.LABEL_VALUES:
                assert value in m.LABEL_VALUES[key], (key, value)
        return tuple(sorted(tags.items()))

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        assert value > 0
        self.values[self._key(tags)] += value

    def set(self, value: float, tags: dict[str, str] | None = None) -> None:
        self.values[self._key(tags)] = value

    def observe(self, value: float, tags: dict[str, str] | None = None) -> None:
        self.observed[self._key(tags)].append(value)
        self.observations.append(value)


def recording_factory() -> tuple[Callable[[MetricSpec], Recorded], dict[str, Recorded]]:
    """A metric factory that keeps every metric it made, by name."""
    made: dict[str, Recorded] = {}

    def factory(spec: MetricSpec) -> Recorded:
        made[spec.name] = Recorded(spec)
        return made[spec.name]

    return factory, made


def recording_metrics() -> tuple[GatewayMetrics, dict[str, Recorded]]:
    """The gateway's metrics over recorded ones, counters unbuffered: a test reads them right after a request."""
    factory, made = recording_factory()
    return GatewayMetrics(factory, counter_flush_s=0), made

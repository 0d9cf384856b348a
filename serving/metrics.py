"""The gateway's Prometheus metrics, recorded through Ray's metrics pipeline.

Why Ray's pipeline and not a ``/metrics`` route on the ingress: every Ray process reports to its
node's metrics agent, which exports one series per process (label ``WorkerId``) on
``metrics.port``; Prometheus sums them. A route on the ingress would show whichever replica the
proxy picked, and undercount with more than one. Ray prefixes every name with ``ray_``; the names
below are without it.

Every label takes a bounded set of values: the ones in ``LABEL_VALUES``, plus Ray's own process
labels (deployment, replica, application, node, worker), bounded by the number of processes. Model
versions are bounded by the number of promotions. Nothing per request or per user is ever a label.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from router.cost import SavingsCarry, dollars_for
from router.drift import RollingHistogram, population_stability_index
from serving.vocabulary import (
    DEGRADED_REASONS,
    FAILURES,
    REQUEST_PATHS,
    ROLES,
    SHADOW_OUTCOMES,
    DegradedReason,
    RequestPath,
    ShadowOutcome,
)

RAY_PREFIX = "ray_"

REQUESTS = "cascade_requests_total"
ESCALATIONS = "cascade_escalations_total"
REQUEST_DURATION = "cascade_request_duration_seconds"
COST = "cascade_cost_dollars_total"
COST_BASELINE = "cascade_cost_baseline_dollars_total"
COST_SAVED = "cascade_cost_saved_dollars_total"
STUDENT_CONFIDENCE = "cascade_student_confidence"
SHADOW = "cascade_shadow_total"
CONFIDENCE_PSI = "cascade_confidence_psi"
BATCH_SIZE = "cascade_batch_size"
QUEUE_DEPTH = "cascade_queue_depth"
MODEL_INFO = "cascade_model_info"
HTTP_RESPONSES = "cascade_http_responses_total"
EXPECTED_ESCALATION = "cascade_expected_escalation_rate"
TRAFFIC_LOG_WRITTEN = "cascade_traffic_log_written_total"
TRAFFIC_LOG_DROPPED = "cascade_traffic_log_dropped_total"
DEGRADED = "cascade_degraded_total"
MODEL_FAILURES = "cascade_model_failures_total"
CIRCUIT_OPEN = "cascade_circuit_open"
KEY_REQUESTS = "cascade_key_requests_total"
KEY_TEACHER_SECONDS = "cascade_key_teacher_seconds_total"

LABEL_VALUES: dict[str, tuple[str, ...]] = {
    "served_by": ROLES,
    "reason": ("escalation", "forced"),
    "path": REQUEST_PATHS,
    "role": (*ROLES, "shadow"),
    "outcome": SHADOW_OUTCOMES,
    "status_class": ("2xx", "4xx", "5xx"),
    "degraded_reason": DEGRADED_REASONS,
    "failure": (*FAILURES, "breaker_open"),
    "stage": ("student", "middle"),
}
"""``key`` (an API key's name) is bounded too: its values are the names in the config and keys file."""

DURATION_BUCKETS_S = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
CONFIDENCE_BUCKETS = [round(0.05 * i, 2) for i in range(1, 20)]  # the 20 bins of the calibration reference
BATCH_SIZE_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256]


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: str  # counter | gauge | histogram
    description: str
    tag_keys: tuple[str, ...] = ()
    boundaries: Sequence[float] = field(default_factory=list)


SPECS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        MetricSpec(
            REQUESTS, "counter", "Classifications (one per input text) by the model that answered.", ("served_by",)
        ),
        MetricSpec(ESCALATIONS, "counter", "Texts the teacher answered, by why it ran.", ("reason",)),
        MetricSpec(
            REQUEST_DURATION,
            "histogram",
            "HTTP request latency inside the ingress, by path: student only, escalated, forced to the teacher.",
            ("path",),
            DURATION_BUCKETS_S,
        ),
        MetricSpec(
            COST, "counter", "Dollars of compute used, by role (shadow = teacher time spent measuring).", ("role",)
        ),
        MetricSpec(COST_BASELINE, "counter", "Dollars the same texts would have cost served by the teacher alone."),
        MetricSpec(COST_SAVED, "counter", "Net dollars saved against teacher-only serving (see SavingsCarry)."),
        MetricSpec(
            STUDENT_CONFIDENCE,
            "histogram",
            "The cascade's signal for every text a stage judged: the student's, and the middle model's in a chain.",
            ("stage",),
            CONFIDENCE_BUCKETS,
        ),
        MetricSpec(SHADOW, "counter", "Shadow comparisons with the teacher, by outcome.", ("outcome",)),
        MetricSpec(CONFIDENCE_PSI, "gauge", "PSI of live student confidence against the calibration reference."),
        MetricSpec(BATCH_SIZE, "histogram", "Texts per model batch, by role.", ("role",), BATCH_SIZE_BUCKETS),
        MetricSpec(QUEUE_DEPTH, "gauge", "Texts waiting for or in a model batch on this replica, by role.", ("role",)),
        MetricSpec(MODEL_INFO, "gauge", "1 for the model version each replica serves.", ("role", "version")),
        MetricSpec(HTTP_RESPONSES, "counter", "HTTP responses of the ingress by status class.", ("status_class",)),
        MetricSpec(TRAFFIC_LOG_WRITTEN, "counter", "Traffic-log records written to a shard."),
        MetricSpec(TRAFFIC_LOG_DROPPED, "counter", "Traffic-log records dropped (buffer full, or a shard failed)."),
        MetricSpec(
            DEGRADED,
            "counter",
            "Texts answered by the other model because one could not answer (see the README's failure modes).",
            ("degraded_reason",),
        ),
        MetricSpec(
            MODEL_FAILURES,
            "counter",
            "Calls to a role that failed, by kind (breaker_open: refused at once, the breaker being open).",
            ("role", "failure"),
        ),
        MetricSpec(
            CIRCUIT_OPEN, "gauge", "1 while this ingress replica's breaker for a role is open or probing.", ("role",)
        ),
        MetricSpec(KEY_REQUESTS, "counter", "Requests admitted, by API key name ('anonymous' without keys).", ("key",)),
        MetricSpec(
            KEY_TEACHER_SECONDS, "counter", "Teacher compute seconds spent on each API key's requests.", ("key",)
        ),
        MetricSpec(
            EXPECTED_ESCALATION,
            "gauge",
            "Escalation rate that calibration measured for the rule in force (absent when the config overrides it).",
        ),
    )
}


MetricFactory = Callable[[MetricSpec], Any]
_REPLICA_METRICS = (BATCH_SIZE, QUEUE_DEPTH, MODEL_INFO)

GAUGE_REFRESH_S = 5.0
"""An unchanged gauge value is set again at most this often (Ray drops a set made while its replica is
still being constructed, so a value set once might never be exported)."""
QUEUE_DEPTH_EVERY_S = 1.0
"""The queue depth is published at most this often (and at once when the queue empties): it changes on
every call, and Prometheus samples it every few seconds anyway."""


class ThrottledGauge:
    """A gauge that reaches Ray's pipeline only when what it shows would change.

    Each Ray metric call costs the ingress about as much as FastAPI's routing (py-spy: metric recording
    was 7% of the ingress's event loop with a dozen calls per request). A gauge that is set on every
    request (the breaker's state, the expected escalation, the queue depth) mostly repeats itself:
    this publishes a new value at once (or, with ``min_change_s``, at most that often unless it is 0),
    and an unchanged one again only every ``GAUGE_REFRESH_S``.
    """

    def __init__(self, gauge: Any, *, min_change_s: float = 0.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._gauge = gauge
        self._min_change_s = min_change_s
        self._clock = clock
        self._published: dict[tuple[tuple[str, str], ...], tuple[float, float]] = {}

    def set(self, value: float, tags: dict[str, str] | None = None) -> None:
        key = tuple(tags.items()) if tags else ()  # callers name their labels in one order
        now = self._clock()
        last = self._published.get(key)
        if last is not None:
            last_value, published_at = last
            elapsed = now - published_at
            if value == last_value and elapsed < GAUGE_REFRESH_S:
                return
            if value != last_value and value != 0 and elapsed < self._min_change_s:
                return
        self._gauge.set(value, tags=tags)
        self._published[key] = (value, now)


COUNTER_FLUSH_S = 1.0
"""The ingress's counters reach Ray's pipeline summed over at most this long (``BufferedCounter``)."""


class BufferedCounter:
    """A counter whose increments reach Ray's pipeline summed, at most ``every_s`` after they happen.

    A request increments half a dozen counters (texts by who answered, each role's dollars, the
    baseline, the savings, the key, the response class), and each Ray metric call costs a few
    microseconds of the ingress's one event loop (``benchmarks/handler_cost.py``). Summed here per
    label set, they cost a dictionary update each, and Ray one call per label set per ``every_s``.
    Prometheus scrapes every few seconds, and Ray's agent exports on its own interval, so nothing
    is seen later than before by more than ``every_s``; what a replica still holds when its process
    is killed is lost (at most ``every_s`` of its counts). The flush is a timer on the running event
    loop; outside one (a script, a test), and with ``every_s`` 0, every increment goes straight through.
    """

    def __init__(self, counter: Any, every_s: float) -> None:
        self._counter = counter
        self._every_s = every_s
        self._pending: dict[tuple[tuple[str, str], ...], float] = {}
        self._flush_due = False

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        if self._every_s <= 0:
            self._counter.inc(value, tags=tags)
            return
        key = tuple(tags.items()) if tags else ()
        self._pending[key] = self._pending.get(key, 0.0) + value
        if self._flush_due:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._flush_due = True
        loop.call_later(self._every_s, self.flush)

    def flush(self) -> None:
        """Hand every pending sum to the counter now."""
        self._flush_due = False
        pending, self._pending = self._pending, {}
        for key, value in pending.items():
            self._counter.inc(value, tags=dict(key) if key else None)


def ray_metric(spec: MetricSpec) -> Any:
    """Create the metric with Ray Serve's wrappers (they add deployment / replica / application labels)."""
    from ray.serve import metrics

    tag_keys: Any = spec.tag_keys  # Ray annotates tag_keys as tuple[str], a one-element tuple
    if spec.kind == "counter":
        return metrics.Counter(spec.name, description=spec.description, tag_keys=tag_keys)
    if spec.kind == "gauge":
        return metrics.Gauge(spec.name, description=spec.description, tag_keys=tag_keys)
    return metrics.Histogram(
        spec.name, description=spec.description, boundaries=list(spec.boundaries), tag_keys=tag_keys
    )


@dataclass
class RequestUsage:
    """Compute seconds one HTTP request used on each role (its share of the batches it rode in)."""

    student_seconds: float = 0.0
    middle_seconds: float = 0.0
    teacher_seconds: float = 0.0


class GatewayMetrics:
    """Everything the ingress records. Pure bookkeeping over metric objects made by ``factory``."""

    def __init__(
        self,
        factory: MetricFactory = ray_metric,
        clock: Callable[[], float] = time.monotonic,
        counter_flush_s: float = COUNTER_FLUSH_S,
    ) -> None:
        self._m = {name: factory(spec) for name, spec in SPECS.items() if name not in _REPLICA_METRICS}
        for name, spec in SPECS.items():
            if spec.kind == "counter":
                self._m[name] = BufferedCounter(self._m[name], counter_flush_s)
        for name in (EXPECTED_ESCALATION, CIRCUIT_OPEN):
            self._m[name] = ThrottledGauge(self._m[name], clock=clock)
        self._carry = SavingsCarry()
        self._drift: RollingHistogram | None = None
        self._drift_reference: list[float] = []
        self._drift_min_samples = 1
        self._drift_every = 1
        self._since_psi = 0
        self.teacher_seconds_per_text: float | None = None
        self._expected_escalation: float | None = None
        self._traffic_log_seen: dict[str, int] = {}
        self.student_dollars_per_hour = 0.0
        self.middle_dollars_per_hour = 0.0
        self.teacher_dollars_per_hour = 0.0

    def configure(
        self,
        *,
        student_dollars_per_hour: float,
        teacher_dollars_per_hour: float,
        middle_dollars_per_hour: float = 0.0,
        reference: dict[str, list[float]] | None,
        window: int,
        min_samples: int,
    ) -> None:
        """Prices and the drift reference; keeps the live window when only prices change."""
        self.student_dollars_per_hour = student_dollars_per_hour
        self.middle_dollars_per_hour = middle_dollars_per_hour
        self.teacher_dollars_per_hour = teacher_dollars_per_hour
        if reference is None:
            self._drift = None
            return
        if self._drift is None or self._drift.window != window or self._drift_reference != reference["shares"]:
            self._drift = RollingHistogram(reference["edges"], window)
            self._drift_reference = list(reference["shares"])
        self._drift_min_samples = min_samples
        self._drift_every = max(1, window // 10)

    def learn_teacher_speed(self, seconds: float, texts: int) -> None:
        """Running estimate of teacher seconds per text: the price of texts the teacher never saw."""
        if texts <= 0:
            return
        observed = seconds / texts
        previous = self.teacher_seconds_per_text
        self.teacher_seconds_per_text = observed if previous is None else 0.9 * previous + 0.1 * observed

    def record_request(
        self,
        *,
        served_by: Sequence[str],
        path: RequestPath,
        duration_s: float,
        student_confidence: np.ndarray | None,
        usage: RequestUsage,
        middle_confidence: np.ndarray | None = None,
    ) -> None:
        """One answered classify request: its texts, latency, cost and savings, and each stage's confidence."""
        self._refresh_gauges()
        for role in LABEL_VALUES["served_by"]:
            count = sum(1 for who in served_by if who == role)
            if count:
                self._m[REQUESTS].inc(count, tags={"served_by": role})
        teacher_texts = sum(1 for who in served_by if who == "teacher")
        if teacher_texts:
            reason = "forced" if path == "forced" else "escalation"
            self._m[ESCALATIONS].inc(teacher_texts, tags={"reason": reason})
            self.learn_teacher_speed(usage.teacher_seconds, teacher_texts)
        self._m[REQUEST_DURATION].observe(duration_s, tags={"path": path})

        student_cost = dollars_for(usage.student_seconds, self.student_dollars_per_hour)
        middle_cost = dollars_for(usage.middle_seconds, self.middle_dollars_per_hour)
        teacher_cost = dollars_for(usage.teacher_seconds, self.teacher_dollars_per_hour)
        if path == "forced":
            baseline = teacher_cost
        else:
            baseline = dollars_for(
                (self.teacher_seconds_per_text or 0.0) * len(served_by), self.teacher_dollars_per_hour
            )
        for role, dollars in (("student", student_cost), ("middle", middle_cost), ("teacher", teacher_cost)):
            if dollars > 0:
                self._m[COST].inc(dollars, tags={"role": role})
        if baseline > 0:
            self._m[COST_BASELINE].inc(baseline)
        self._save(baseline - student_cost - middle_cost - teacher_cost)

        for stage, scores in (("student", student_confidence), ("middle", middle_confidence)):
            for value in scores if scores is not None else ():
                self._m[STUDENT_CONFIDENCE].observe(float(value), tags={"stage": stage})
        if student_confidence is not None and len(student_confidence):
            self._observe_drift(student_confidence)

    def expect_escalation(self, rate: float | None) -> None:
        """The calibrated escalation rate of the rule in force (None: the config overrode calibration)."""
        self._expected_escalation = rate

    def _refresh_gauges(self) -> None:
        # Ray drops a gauge set while its replica is still being constructed: set it again as we go.
        if self._expected_escalation is not None:
            self._m[EXPECTED_ESCALATION].set(self._expected_escalation)

    def record_shadow(self, outcome: ShadowOutcome, teacher_seconds: float = 0.0, texts: int = 0) -> None:
        self._m[SHADOW].inc(max(texts, 1), tags={"outcome": outcome})
        if teacher_seconds > 0:
            self.learn_teacher_speed(teacher_seconds, texts)
            dollars = dollars_for(teacher_seconds, self.teacher_dollars_per_hour)
            self._m[COST].inc(dollars, tags={"role": "shadow"})
            self._save(-dollars)

    def record_traffic_log(self, written: int, dropped: int) -> None:
        """Export the writer's running totals (it counts in its own thread; we publish the increase)."""
        for name, total in ((TRAFFIC_LOG_WRITTEN, written), (TRAFFIC_LOG_DROPPED, dropped)):
            increase = total - self._traffic_log_seen.get(name, 0)
            if increase > 0:
                self._m[name].inc(increase)
                self._traffic_log_seen[name] = total

    def record_degraded(self, reason: DegradedReason, texts: int) -> None:
        self._m[DEGRADED].inc(texts, tags={"degraded_reason": reason})

    def record_model_failure(self, role: str, failure: str) -> None:
        self._m[MODEL_FAILURES].inc(1, tags={"role": role, "failure": failure})

    def record_circuit(self, role: str, is_open: bool) -> None:
        self._m[CIRCUIT_OPEN].set(1.0 if is_open else 0.0, tags={"role": role})

    def record_key(self, key: str, teacher_seconds: float) -> None:
        """One admitted request of an API key, and the teacher seconds it used."""
        self._m[KEY_REQUESTS].inc(1, tags={"key": key})
        if teacher_seconds > 0:
            self._m[KEY_TEACHER_SECONDS].inc(teacher_seconds, tags={"key": key})

    def record_response(self, status: int) -> None:
        self._m[HTTP_RESPONSES].inc(1, tags={"status_class": f"{min(max(status // 100, 2), 5)}xx"})

    def _save(self, saving: float) -> None:
        emitted = self._carry.add(saving)
        if emitted > 0:
            self._m[COST_SAVED].inc(emitted)

    def _observe_drift(self, confidence: np.ndarray) -> None:
        if self._drift is None:
            return
        self._drift.add(confidence)
        self._since_psi += len(confidence)
        if len(self._drift) >= self._drift_min_samples and self._since_psi >= self._drift_every:
            self._since_psi = 0
            self._m[CONFIDENCE_PSI].set(population_stability_index(self._drift_reference, self._drift.counts))


class ReplicaMetrics:
    """What a model replica records: batch sizes and its queue depth, and the version it serves."""

    def __init__(
        self, role: str, version: str, factory: MetricFactory = ray_metric, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._role = role
        self._batch = factory(SPECS[BATCH_SIZE])
        self._queue = ThrottledGauge(factory(SPECS[QUEUE_DEPTH]), min_change_s=QUEUE_DEPTH_EVERY_S, clock=clock)
        self._depth = 0
        self._info = ThrottledGauge(factory(SPECS[MODEL_INFO]), clock=clock)
        self._version = version

    def serving(self) -> None:
        """Mark the version this replica serves (again on every batch: Ray drops a gauge set during start-up)."""
        self._info.set(1, tags={"role": self._role, "version": self._version})

    def queued(self, texts: int) -> None:
        self._depth += texts
        self._queue.set(self._depth, tags={"role": self._role})

    def batch(self, texts: int) -> None:
        self._batch.observe(texts, tags={"role": self._role})
        self.serving()


def exported_name(name: str, kind: str) -> list[str]:
    """The series names Prometheus sees for a metric (with Ray's prefix and a histogram's suffixes)."""
    base = RAY_PREFIX + name
    if kind == "histogram":
        return [f"{base}_bucket", f"{base}_count", f"{base}_sum"]
    return [base]


__all__ = [
    "LABEL_VALUES",
    "SPECS",
    "BufferedCounter",
    "GatewayMetrics",
    "MetricSpec",
    "ReplicaMetrics",
    "RequestUsage",
    "ThrottledGauge",
    "exported_name",
    "ray_metric",
]

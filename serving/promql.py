"""The PromQL pieces that the rules (``serving.monitoring``) and the dashboards (``serving.dashboards``)
share: metric names as Prometheus sees them, recording-rule names, and the ratios both compute."""

from __future__ import annotations

import re

from serving import metrics as m

P = m.RAY_PREFIX
RATE = "$__rate_interval"
FIVE_XX = '{status_class="5xx"}'
SERVED_BY_STUDENT = '{served_by="student"}'  # Grafana's rate window; the live test substitutes a fixed one

# Recording rule names (level:metric:operations, Prometheus's naming convention).
REQUESTS_RATE = "cascade:requests:rate5m"
ESCALATION_RATIO = "cascade:escalation:ratio_rate5m"
COST_PER_REQUEST = "cascade:cost_per_request:dollars_rate5m"
SAVED_SHARE = "cascade:cost_saved:ratio_rate5m"
AGREEMENT = {window: f"cascade:shadow_agreement:ratio_rate{window}" for window in ("5m", "1h")}
ERROR_RATIO = "cascade:http_5xx:ratio_rate5m"
LAST_REDISTILL = "cascade_redistill_last_success_timestamp_seconds"
"""Pushed by the re-distillation job (or read from its textfile): no ``ray_`` prefix, it is not Ray's."""


def sum_rate(name: str, selector: str = "", window: str = "5m", by: str = "") -> str:
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping}(rate({P}{name}{selector}[{window}]))"


def non_forced_texts(window: str) -> str:
    forced = sum_rate(m.ESCALATIONS, '{reason="forced"}', window)
    return f"({sum_rate(m.REQUESTS, window=window)} - ({forced} or vector(0)))"


def escalation_ratio(window: str) -> str:
    low = sum_rate(m.ESCALATIONS, '{reason="escalation"}', window)
    return f"({low} or vector(0)) / {non_forced_texts(window)}"


def agreement(window: str) -> str:
    agree = sum_rate(m.SHADOW, '{outcome="agree"}', window)
    compared = sum_rate(m.SHADOW, '{outcome=~"agree|disagree"}', window)
    return f"({agree} or vector(0)) / {compared}"


_SERIES = re.compile(r"\b(ray_cascade_[a-z_]+|cascade_redistill_[a-z_]+|cascade:[a-z0-9_:]+)")


def metrics_named(expr: str) -> set[str]:
    """The series an expression reads (our exported metrics and our recording rules)."""
    return set(_SERIES.findall(expr))


__all__ = [
    "AGREEMENT",
    "COST_PER_REQUEST",
    "ERROR_RATIO",
    "ESCALATION_RATIO",
    "FIVE_XX",
    "LAST_REDISTILL",
    "RATE",
    "REQUESTS_RATE",
    "SAVED_SHARE",
    "SERVED_BY_STUDENT",
    "P",
    "agreement",
    "escalation_ratio",
    "metrics_named",
    "non_forced_texts",
    "sum_rate",
]

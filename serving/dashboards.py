"""The Grafana dashboards, generated from code (``cascade monitoring`` writes them; see ``serving.monitoring``).

Each panel's queries name metrics from ``serving.metrics``; every raw series is filtered by the
dashboards' ``$cluster`` variable (``in_cluster``), so one Grafana can show several Ray clusters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from serving import metrics as m
from serving.promql import (
    FIVE_XX,
    RATE,
    SERVED_BY_STUDENT,
    P,
    agreement,
    escalation_ratio,
    sum_rate,
)


@dataclass(frozen=True)
class Panel:
    title: str
    queries: list[tuple[str, str]]
    """(PromQL, legend) pairs."""
    unit: str = "short"
    kind: str = "timeseries"  # timeseries | stat | heatmap | table
    description: str = ""


def _quantile(q: float, by: str = "le") -> str:
    return f"histogram_quantile({q}, sum by ({by}) (rate({P}{m.REQUEST_DURATION}_bucket[{RATE}])))"


def _r(name: str, selector: str = "", by: str = "") -> str:
    return sum_rate(name, selector, RATE, by)


DASHBOARDS: dict[str, tuple[str, list[Panel]]] = {
    "cascade-cost": (
        "cascade-gateway · cost",
        [
            Panel("Cost per request", [(f"{_r(m.COST)} / {_r(m.REQUESTS)}", "$ / request")], "currencyUSD", "stat"),
            Panel(
                "Cost per 1,000 requests: cascade vs teacher only",
                [
                    (f"1000 * {_r(m.COST)} / {_r(m.REQUESTS)}", "cascade"),
                    (f"1000 * {_r(m.COST_BASELINE)} / {_r(m.REQUESTS)}", "teacher only"),
                ],
                "currencyUSD",
            ),
            Panel(
                "Saved against teacher only (share)",
                [(f"{_r(m.COST_SAVED)} / {_r(m.COST_BASELINE)}", "saved")],
                "percentunit",
                "stat",
            ),
            Panel("Dollars per hour by role", [(f"3600 * {_r(m.COST, by='role')}", "{{role}}")], "currencyUSD"),
            Panel(
                "Saved dollars (window)",
                [(f"sum(increase({P}{m.COST_SAVED}[$__range]))", "saved")],
                "currencyUSD",
                "stat",
            ),
        ],
    ),
    "cascade-routing": (
        "cascade-gateway · routing",
        [
            Panel("Escalation rate", [(escalation_ratio(RATE), "escalated")], "percentunit"),
            Panel(
                "Escalation rate vs calibrated",
                [(escalation_ratio(RATE), "live"), (f"max({P}{m.EXPECTED_ESCALATION})", "calibrated")],
                "percentunit",
            ),
            Panel(
                "Share served by the student",
                [(f"{_r(m.REQUESTS, SERVED_BY_STUDENT)} / {_r(m.REQUESTS)}", "student")],
                "percentunit",
                "stat",
            ),
            Panel("Texts per second by model", [(_r(m.REQUESTS, by="served_by"), "{{served_by}}")], "reqps"),
            Panel(
                "Student confidence",
                [(f'sum by (le) (increase({P}{m.STUDENT_CONFIDENCE}_bucket{{stage="student"}}[{RATE}]))', "{{le}}")],
                "short",
                "heatmap",
            ),
            Panel(
                "Middle model confidence (a chain of three)",
                [(f'sum by (le) (increase({P}{m.STUDENT_CONFIDENCE}_bucket{{stage="middle"}}[{RATE}]))', "{{le}}")],
                "short",
                "heatmap",
            ),
        ],
    ),
    "cascade-quality": (
        "cascade-gateway · quality drift",
        [
            Panel("Shadow agreement with the teacher", [(agreement(RATE), "agreement")], "percentunit"),
            Panel("Shadow comparisons by outcome", [(_r(m.SHADOW, by="outcome"), "{{outcome}}")], "ops"),
            Panel(
                "Confidence PSI against calibration",
                [(f"max({P}{m.CONFIDENCE_PSI})", "PSI")],
                "short",
                description="Below 0.1 stable; 0.1–0.25 moderate shift (warning); above 0.25 large (page).",
            ),
            Panel(
                "Model versions serving",
                [(f"max by (role, version) ({P}{m.MODEL_INFO})", "{{role}} {{version}}")],
                "short",
                "table",
            ),
        ],
    ),
    "cascade-serving": (
        "cascade-gateway · serving",
        [
            Panel(
                "Requests per second by path",
                [(f"sum by (path) (rate({P}{m.REQUEST_DURATION}_count[{RATE}]))", "{{path}}")],
                "reqps",
            ),
            Panel(
                "Latency p50 / p95 / p99 by path",
                [(_quantile(q, "le, path"), f"p{round(q * 100)} {{{{path}}}}") for q in (0.5, 0.95, 0.99)],
                "s",
            ),
            Panel("Queue depth by role", [(f"sum by (role) ({P}{m.QUEUE_DEPTH})", "{{role}}")], "short"),
            Panel(
                "Batch size p50 / p95 by role",
                [
                    (
                        f"histogram_quantile({q}, sum by (le, role) (rate({P}{m.BATCH_SIZE}_bucket[{RATE}])))",
                        f"p{p} {{{{role}}}}",
                    )
                    for q, p in ((0.5, 50), (0.95, 95))
                ],
                "short",
                description="Quantiles, not _sum/_count: Ray exports a histogram's _sum from bucket midpoints.",
            ),
            Panel(
                "Responses by status class", [(_r(m.HTTP_RESPONSES, by="status_class"), "{{status_class}}")], "reqps"
            ),
            Panel(
                "Traffic log: records written and dropped per second",
                [(_r(m.TRAFFIC_LOG_WRITTEN), "written"), (f"{_r(m.TRAFFIC_LOG_DROPPED)} or vector(0)", "dropped")],
                "ops",
            ),
            Panel(
                "5xx share",
                [(f"({_r(m.HTTP_RESPONSES, FIVE_XX)} or vector(0)) / {_r(m.HTTP_RESPONSES)}", "5xx")],
                "percentunit",
                "stat",
            ),
            Panel(
                "Degraded answers per second by reason",
                [(f"{_r(m.DEGRADED, by='degraded_reason')} or vector(0)", "{{degraded_reason}}")],
                "ops",
                description="A text answered by the other model because the one the cascade chose could not.",
            ),
            Panel(
                "Model call failures per second by role and kind",
                [(f"{_r(m.MODEL_FAILURES, by='role, failure')} or vector(0)", "{{role}} {{failure}}")],
                "ops",
            ),
            Panel(
                "Circuit breakers open (ingress replicas)",
                [(f"sum by (role) ({P}{m.CIRCUIT_OPEN})", "{{role}}")],
                "short",
            ),
            Panel("Requests per second by API key", [(_r(m.KEY_REQUESTS, by="key"), "{{key}}")], "reqps"),
            Panel(
                "Teacher seconds per second by API key",
                [(_r(m.KEY_TEACHER_SECONDS, by="key"), "{{key}}")],
                "short",
                description="Teacher compute each key's requests used: the share of the teacher it occupies.",
            ),
        ],
    ),
}


CLUSTER_LABEL = "ray_io_cluster"
"""The Ray cluster a series came from: KubeRay's pod label, which the PodMonitor copies onto every series.
Absent on one machine, where the dashboards' ``All`` (``.*``) still matches."""
_RAW_SERIES = re.compile(r"\b(ray_cascade_[a-z_]+)(\{([^}]*)\})?")


def in_cluster(expr: str) -> str:
    """``expr`` with every raw cascade series filtered by the dashboard's ``$cluster`` variable."""

    def add(match: re.Match[str]) -> str:
        inner = match.group(3)
        matchers = f'{inner}, {CLUSTER_LABEL}=~"$cluster"' if inner else f'{CLUSTER_LABEL}=~"$cluster"'
        return f"{match.group(1)}{{{matchers}}}"

    return _RAW_SERIES.sub(add, expr)


def _grafana_panel(panel: Panel, panel_id: int) -> dict[str, Any]:
    width = 8 if panel.kind == "stat" else 12
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": width, "x": 0, "y": 8 * (panel_id - 1)},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "options": {},
        "targets": [
            {
                "refId": chr(ord("A") + index),
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "expr": in_cluster(expr),
                "legendFormat": legend,
                **({"format": "heatmap"} if panel.kind == "heatmap" else {}),
                **({"format": "table", "instant": True} if panel.kind == "table" else {}),
            }
            for index, (expr, legend) in enumerate(panel.queries)
        ],
    }


def dashboard(uid: str) -> dict[str, Any]:
    title, panels = DASHBOARDS[uid]
    return {
        "uid": uid,
        "title": title,
        "tags": ["cascade-gateway"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "type": "datasource",
                    "query": "prometheus",
                    "label": "Prometheus",
                    "current": {},
                },
                {
                    "name": "cluster",
                    "type": "query",
                    "label": "Ray cluster",
                    "datasource": {"type": "prometheus", "uid": "${datasource}"},
                    "query": {"query": f"label_values({P}{m.REQUESTS}, {CLUSTER_LABEL})", "refId": "cluster"},
                    "includeAll": True,
                    "multi": True,
                    "allValue": ".*",
                    "current": {"selected": True, "text": "All", "value": "$__all"},
                    "refresh": 2,
                },
            ]
        },
        "panels": [_grafana_panel(panel, i) for i, panel in enumerate(panels, start=1)],
    }


def panel_queries() -> list[tuple[str, str, str]]:
    """Every (dashboard uid, panel title, PromQL) the dashboards run, ``$cluster`` filter included."""
    return [
        (uid, panel.title, in_cluster(expr))
        for uid, (_, panels) in DASHBOARDS.items()
        for panel in panels
        for expr, _ in panel.queries
    ]


__all__ = ["CLUSTER_LABEL", "DASHBOARDS", "Panel", "dashboard", "in_cluster", "panel_queries"]

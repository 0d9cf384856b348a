"""Prometheus recording and alert rules and Grafana dashboards, generated from code.

Why generated: every query names metrics from ``serving.metrics``, so a renamed metric fails a test
instead of leaving a silent empty panel, and the thresholds an operator sets (agreement floor, cost
budget, escalation margin) live in one place. ``cascade monitoring --out deploy`` writes:

    deploy/prometheus/rules/cascade.rules.yml       recording rules
    deploy/prometheus/rules/cascade.alerts.yml      alert rules
    deploy/grafana/dashboards/cascade-*.json        four dashboards (cost, routing, quality, serving)

The committed files are this module's output with the defaults below; a test regenerates them and
fails on any difference, so edit this file, never the JSON.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

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


@dataclass(frozen=True)
class AlertThresholds:
    """What an operator tunes. Drift thresholds are the usual PSI rules of thumb."""

    psi_warning: float = 0.1
    psi_page: float = 0.25
    agreement_floor: float = 0.9
    min_shadow_samples_per_hour: int = 50
    escalation_margin: float = 0.5
    """Alert when escalation exceeds the calibrated rate by this share (0.5: 1.5× the calibrated rate)."""
    cost_per_request_budget_dollars: float = 0.0001
    error_ratio: float = 0.01
    redistill_max_age_s: float = 2 * 86_400
    """Alert when no re-distillation run succeeded for this long (the example job runs every 6 hours)."""


def _sum_rate(name: str, selector: str = "", window: str = "5m", by: str = "") -> str:
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping}(rate({P}{name}{selector}[{window}]))"


def _non_forced_texts(window: str) -> str:
    forced = _sum_rate(m.ESCALATIONS, '{reason="forced"}', window)
    return f"({_sum_rate(m.REQUESTS, window=window)} - ({forced} or vector(0)))"


def _escalation_ratio(window: str) -> str:
    low = _sum_rate(m.ESCALATIONS, '{reason="escalation"}', window)
    return f"({low} or vector(0)) / {_non_forced_texts(window)}"


def _agreement(window: str) -> str:
    agree = _sum_rate(m.SHADOW, '{outcome="agree"}', window)
    compared = _sum_rate(m.SHADOW, '{outcome=~"agree|disagree"}', window)
    return f"({agree} or vector(0)) / {compared}"


def recording_rules() -> dict[str, Any]:
    rules = [
        {"record": REQUESTS_RATE, "expr": _sum_rate(m.REQUESTS)},
        {"record": ESCALATION_RATIO, "expr": _escalation_ratio("5m")},
        {"record": COST_PER_REQUEST, "expr": f"{_sum_rate(m.COST)} / {_sum_rate(m.REQUESTS)}"},
        {"record": SAVED_SHARE, "expr": f"{_sum_rate(m.COST_SAVED)} / {_sum_rate(m.COST_BASELINE)}"},
        *({"record": AGREEMENT[w], "expr": _agreement(w)} for w in AGREEMENT),
        {
            "record": ERROR_RATIO,
            "expr": f"({_sum_rate(m.HTTP_RESPONSES, FIVE_XX)} or vector(0)) / {_sum_rate(m.HTTP_RESPONSES)}",
        },
    ]
    return {"groups": [{"name": "cascade-gateway.rules", "rules": rules}]}


def alert_rules(thresholds: AlertThresholds = AlertThresholds()) -> dict[str, Any]:
    t = thresholds
    psi = f"max({P}{m.CONFIDENCE_PSI})"
    shadow_samples = f'sum(increase({P}{m.SHADOW}{{outcome=~"agree|disagree"}}[1h]))'
    margin = 1 + t.escalation_margin

    def alert(name: str, expr: str, duration: str, severity: str, summary: str, description: str) -> dict[str, Any]:
        return {
            "alert": name,
            "expr": expr,
            "for": duration,
            "labels": {"severity": severity},
            "annotations": {"summary": summary, "description": description},
        }

    stale = t.redistill_max_age_s
    rules = [
        alert(
            "CascadeRedistillStale",
            f"time() - max({LAST_REDISTILL}) > {stale:g}",
            "10m",
            "warning",
            "No re-distillation run succeeded recently",
            f"The last successful `cascade redistill` ended {{{{ $value | humanizeDuration }}}} ago "
            f"(limit {stale:g} s): the job stopped running or keeps failing; see the reports in its --state folder.",
        ),
        alert(
            "CascadeConfidenceDrift",
            f"{psi} > {t.psi_warning}",
            "15m",
            "warning",
            "Student confidence has drifted from calibration",
            f'PSI of live confidence is {{{{ $value | printf "%.3f" }}}} (warning above {t.psi_warning}). '
            "Traffic no longer looks like the calibration set: check agreement, consider `cascade redistill`.",
        ),
        alert(
            "CascadeConfidenceDriftSevere",
            f"{psi} > {t.psi_page}",
            "15m",
            "page",
            "Student confidence has shifted a lot",
            f'PSI {{{{ $value | printf "%.3f" }}}} is above {t.psi_page}: escalation and quality expectations '
            "from calibration no longer hold.",
        ),
        alert(
            "CascadeShadowAgreementLow",
            f"{AGREEMENT['1h']} < {t.agreement_floor} and on() {shadow_samples} >= {t.min_shadow_samples_per_hour}",
            "15m",
            "page",
            "Student agrees with the teacher less than the floor",
            f"Shadow agreement over 1h is {{{{ $value | humanizePercentage }}}} (floor {t.agreement_floor}).",
        ),
        alert(
            "CascadeEscalationAboveCalibrated",
            f"{ESCALATION_RATIO} > on() (max({P}{m.EXPECTED_ESCALATION}) * {margin})",
            "15m",
            "warning",
            "More requests escalate than calibration predicted",
            f"Escalation rate {{{{ $value | humanizePercentage }}}} is over {margin}× the calibrated rate: "
            "the teacher is paying for drift.",
        ),
        alert(
            "CascadeCostPerRequestOverBudget",
            f"{COST_PER_REQUEST} > {t.cost_per_request_budget_dollars}",
            "15m",
            "warning",
            "Cost per request is over budget",
            'Cost per request ${{ $value | printf "%.6f" }} is above the budget '
            f"${t.cost_per_request_budget_dollars}.",
        ),
        alert(
            "CascadeCircuitOpen",
            f"max by (role) ({P}{m.CIRCUIT_OPEN}) > 0",
            "2m",
            "page",
            "A model role is failing: its circuit breaker is open",
            "The {{ $labels.role }} fails or times out repeatedly; escalated texts are answered degraded "
            "(or refused with on_teacher_failure: fail).",
        ),
        alert(
            "CascadeHighErrorRate",
            f"{ERROR_RATIO} > {t.error_ratio}",
            "5m",
            "page",
            "The gateway answers with 5xx",
            f"{{{{ $value | humanizePercentage }}}} of responses are 5xx (threshold {t.error_ratio}).",
        ),
    ]
    return {"groups": [{"name": "cascade-gateway.alerts", "rules": rules}]}


# --- Grafana ---------------------------------------------------------------------------------------


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
    return _sum_rate(name, selector, RATE, by)


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
            Panel("Escalation rate", [(_escalation_ratio(RATE), "escalated")], "percentunit"),
            Panel(
                "Escalation rate vs calibrated",
                [(_escalation_ratio(RATE), "live"), (f"max({P}{m.EXPECTED_ESCALATION})", "calibrated")],
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
            Panel("Shadow agreement with the teacher", [(_agreement(RATE), "agreement")], "percentunit"),
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


_SERIES = re.compile(r"\b(ray_cascade_[a-z_]+|cascade_redistill_[a-z_]+|cascade:[a-z0-9_:]+)")


def metrics_named(expr: str) -> set[str]:
    """The series an expression reads (our exported metrics and our recording rules)."""
    return set(_SERIES.findall(expr))


def generated_files(thresholds: AlertThresholds = AlertThresholds()) -> dict[str, str]:
    """Relative path under ``deploy/`` → file content."""
    header = "# Generated by `cascade monitoring --out deploy` from serving/monitoring.py; do not edit.\n"
    files = {
        "prometheus/rules/cascade.rules.yml": header + yaml.safe_dump(recording_rules(), sort_keys=False, width=200),
        "prometheus/rules/cascade.alerts.yml": header
        + yaml.safe_dump(alert_rules(thresholds), sort_keys=False, width=200),
    }
    for uid in DASHBOARDS:
        files[f"grafana/dashboards/{uid}.json"] = json.dumps(dashboard(uid), indent=2) + "\n"
    files |= _kubernetes_files(header, thresholds)
    return files


def _kubernetes_files(header: str, thresholds: AlertThresholds) -> dict[str, str]:
    """The same rules and dashboards as Prometheus-operator and Grafana-sidecar resources."""
    labels = {"app.kubernetes.io/name": "cascade-gateway"}
    rules = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "cascade-gateway", "labels": labels},
        "spec": {"groups": recording_rules()["groups"] + alert_rules(thresholds)["groups"]},
    }
    dashboards = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "cascade-dashboards", "labels": {**labels, "grafana_dashboard": "1"}},
        "data": {f"{uid}.json": json.dumps(dashboard(uid), indent=2) + "\n" for uid in DASHBOARDS},
    }
    note = '# grafana_dashboard: "1" is the label Grafana\'s dashboard sidecar (kube-prometheus-stack) looks for.\n'
    return {
        "kubernetes/prometheusrule.yaml": header + yaml.safe_dump(rules, sort_keys=False, width=200),
        "kubernetes/grafana-dashboards.yaml": header + note + yaml.safe_dump(dashboards, sort_keys=False, width=200),
    }


def write_monitoring(out: Path, thresholds: AlertThresholds = AlertThresholds()) -> list[Path]:
    written = []
    for relative, content in generated_files(thresholds).items():
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
        written.append(path)
    return written


__all__ = [
    "DASHBOARDS",
    "AlertThresholds",
    "alert_rules",
    "dashboard",
    "generated_files",
    "metrics_named",
    "panel_queries",
    "recording_rules",
    "write_monitoring",
]

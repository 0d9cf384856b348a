"""Prometheus recording and alert rules and Grafana dashboards, generated from code.

Why generated: every query names metrics from ``serving.metrics``, so a renamed metric fails a test
instead of leaving a silent empty panel, and the thresholds an operator sets (agreement floor, cost
budget, escalation margin) live in one place. ``cascade monitoring --out deploy`` writes:

    deploy/prometheus/rules/cascade.rules.yml       recording rules
    deploy/prometheus/rules/cascade.alerts.yml      alert rules
    deploy/grafana/dashboards/cascade-*.json        four dashboards (``serving.dashboards``)
    deploy/kubernetes/prometheusrule.yaml           the rules, for the Prometheus operator
    deploy/kubernetes/grafana-dashboards.yaml       the dashboards, for Grafana's sidecar

The committed files are this module's output with the defaults below; a test regenerates them and
fails on any difference, so edit this file, never the JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from serving import metrics as m
from serving.dashboards import DASHBOARDS, dashboard
from serving.promql import (
    AGREEMENT,
    COST_PER_REQUEST,
    ERROR_RATIO,
    ESCALATION_RATIO,
    FIVE_XX,
    LAST_REDISTILL,
    REQUESTS_RATE,
    SAVED_SHARE,
    P,
    agreement,
    escalation_ratio,
    sum_rate,
)


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


def recording_rules() -> dict[str, Any]:
    rules = [
        {"record": REQUESTS_RATE, "expr": sum_rate(m.REQUESTS)},
        {"record": ESCALATION_RATIO, "expr": escalation_ratio("5m")},
        {"record": COST_PER_REQUEST, "expr": f"{sum_rate(m.COST)} / {sum_rate(m.REQUESTS)}"},
        {"record": SAVED_SHARE, "expr": f"{sum_rate(m.COST_SAVED)} / {sum_rate(m.COST_BASELINE)}"},
        *({"record": AGREEMENT[w], "expr": agreement(w)} for w in AGREEMENT),
        {
            "record": ERROR_RATIO,
            "expr": f"({sum_rate(m.HTTP_RESPONSES, FIVE_XX)} or vector(0)) / {sum_rate(m.HTTP_RESPONSES)}",
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


def generated_files(thresholds: AlertThresholds = AlertThresholds()) -> dict[str, str]:
    """Relative path under ``deploy/`` → file content."""
    header = (
        "# Generated by `cascade monitoring --out deploy` from serving/monitoring.py and dashboards.py; do not edit.\n"
    )
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


__all__ = ["AlertThresholds", "alert_rules", "generated_files", "recording_rules", "write_monitoring"]

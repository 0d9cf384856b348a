"""Statistics of Locust's per-request records: stage throughput and latency, accuracy, the summary over repeats.

Pure functions over the records ``loadtests/locustfile.py`` writes (one JSON line per request), so
that every figure of a load-test report can be recomputed from the records alone.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np


@dataclass
class Stage:
    repeat: int
    configuration: str
    offered_rps: float
    achieved_rps: float
    requests: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    error_rate: float
    escalation_rate: float
    passed: bool


@dataclass
class ConfigurationRun:
    repeat: int
    configuration: str
    stages: list[Stage] = field(default_factory=list)
    sustained_rps: float = 0.0
    sustained_rps_by_target: dict[str, float] = field(default_factory=dict)
    accuracy: float | None = None
    agreement_with_teacher: float | None = None
    escalation_rate: float = 0.0
    cost_per_1000_dollars: float | None = None
    at_sustained: Stage | None = None
    answers: dict[int, tuple[str | None, str]] = field(default_factory=dict, repr=False)
    """Text index → (gold, label), the first answer per distinct text (not written to the report)."""


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else math.nan


def stage_stats(
    records: list[dict[str, Any]], started: float, warmup_s: float, duration_s: float
) -> dict[str, float | int]:
    """Throughput, latency quantiles, errors and escalation of one stage's records after its warm-up."""
    window_start, window_end = started + warmup_s, started + duration_s
    window = [r for r in records if window_start <= r["t"] < window_end]
    ok = [r for r in window if r["status"] == 200]
    texts = sum(len(r["escalated"]) for r in ok)
    return {
        "requests": len(window),
        "achieved_rps": len(ok) / max(1e-9, window_end - window_start),
        "p50_ms": percentile([r["ms"] for r in ok], 50),
        "p95_ms": percentile([r["ms"] for r in ok], 95),
        "p99_ms": percentile([r["ms"] for r in ok], 99),
        "error_rate": (len(window) - len(ok)) / len(window) if window else 1.0,
        "escalation_rate": sum(sum(r["escalated"]) for r in ok) / texts if texts else 0.0,
    }


def answers(records: list[dict[str, Any]]) -> dict[int, tuple[str | None, str]]:
    """Text index → (gold, label): the first answer per distinct text of the main mix.

    Accuracy is taken over distinct texts, not requests, so that it does not depend on which texts
    happened to repeat; the models are deterministic, so a repeat would give the same answer.
    """
    seen: dict[int, tuple[str | None, str]] = {}
    for r in sorted(records, key=lambda r: r["t"]):
        if r["status"] != 200:
            continue
        for index, gold, label, source in zip(r["index"], r["gold"], r["label"], r["mix"], strict=True):
            if source in ("main", "before"):
                seen.setdefault(index, (gold, label))
    return seen


def quality(records: list[dict[str, Any]], teacher_labels: dict[int, str] | None) -> dict[str, float | None]:
    """Accuracy against gold labels and agreement with the teacher, over the distinct texts answered."""
    seen = answers(records)
    gold_pairs = [(gold, label) for gold, label in seen.values() if gold is not None]
    accuracy = sum(g == p for g, p in gold_pairs) / len(gold_pairs) if gold_pairs else None
    agreement = None
    if teacher_labels:
        known = [(teacher_labels[i], label) for i, (_, label) in seen.items() if i in teacher_labels]
        agreement = sum(t == p for t, p in known) / len(known) if known else None
    return {"accuracy": accuracy, "agreement": agreement}


def paired_accuracy_gap(teacher: dict[int, tuple[str | None, str]], other: dict[int, tuple[str | None, str]]) -> Any:
    """Teacher accuracy minus the other's, in points, on the texts both answered (None without gold)."""
    common = [i for i in teacher if i in other and teacher[i][0] is not None]
    if not common:
        return None
    right = sum(teacher[i][1] == teacher[i][0] for i in common) - sum(other[i][1] == other[i][0] for i in common)
    return 100 * right / len(common)


def teacher_answers(records: list[dict[str, Any]]) -> dict[int, str]:
    return {index: label for index, (_, label) in answers(records).items()}


def cost_counters(metrics_url: str) -> tuple[float, float]:
    """(dollars, texts) summed over the gateway's processes, from its metrics endpoint."""
    from prometheus_client.parser import text_string_to_metric_families

    dollars = texts = 0.0
    for family in text_string_to_metric_families(httpx.get(metrics_url, timeout=10).text):
        for sample in family.samples:
            if sample.name == "ray_cascade_cost_dollars_total":
                dollars += sample.value
            elif sample.name == "ray_cascade_requests_total":
                texts += sample.value
    return dollars, texts


def summarise(runs: list[ConfigurationRun]) -> dict[str, Any]:
    """Medians per configuration over repeats, and the three ratios per repeat (then their median)."""
    by_config: dict[str, list[ConfigurationRun]] = {}
    for run in runs:
        by_config.setdefault(run.configuration, []).append(run)

    def median(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None and not math.isnan(v)]
        return statistics.median(known) if known else None

    configurations = {
        name: {
            "sustained_rps": median([r.sustained_rps for r in group]),
            "sustained_rps_by_p99_target_ms": {
                target: median([r.sustained_rps_by_target.get(target) for r in group])
                for target in group[0].sustained_rps_by_target
            },
            "p50_ms_at_sustained": median([r.at_sustained.p50_ms if r.at_sustained else None for r in group]),
            "p95_ms_at_sustained": median([r.at_sustained.p95_ms if r.at_sustained else None for r in group]),
            "p99_ms_at_sustained": median([r.at_sustained.p99_ms if r.at_sustained else None for r in group]),
            "error_rate_at_sustained": median([r.at_sustained.error_rate if r.at_sustained else None for r in group]),
            "escalation_rate": median([r.escalation_rate for r in group]),
            "accuracy": median([r.accuracy for r in group]),
            "agreement_with_teacher": median([r.agreement_with_teacher for r in group]),
            "cost_per_1000_dollars": median([r.cost_per_1000_dollars for r in group]),
        }
        for name, group in by_config.items()
    }
    ratios: dict[str, Any] = {}
    teacher, cascade = by_config.get("teacher_only", []), by_config.get("cascade", [])
    if teacher and cascade:
        per_repeat = []
        for t, c in zip(teacher, cascade, strict=True):
            per_repeat.append(
                {
                    "repeat": t.repeat,
                    "throughput_ratio": c.sustained_rps / t.sustained_rps if t.sustained_rps else None,
                    "throughput_ratio_by_p99_target_ms": {
                        target: c.sustained_rps_by_target[target] / rps if rps else None
                        for target, rps in t.sustained_rps_by_target.items()
                    },
                    "accuracy_gap_points": paired_accuracy_gap(t.answers, c.answers),
                    "cost_ratio": c.cost_per_1000_dollars / t.cost_per_1000_dollars
                    if c.cost_per_1000_dollars and t.cost_per_1000_dollars
                    else None,
                }
            )
        ratios = {
            "per_repeat": per_repeat,
            "median_throughput_ratio": median([r["throughput_ratio"] for r in per_repeat]),
            "median_throughput_ratio_by_p99_target_ms": {
                target: median([r["throughput_ratio_by_p99_target_ms"][target] for r in per_repeat])
                for target in per_repeat[0]["throughput_ratio_by_p99_target_ms"]
            },
            "median_accuracy_gap_points": median([r["accuracy_gap_points"] for r in per_repeat]),
            "median_cost_ratio": median([r["cost_ratio"] for r in per_repeat]),
        }
    return {"configurations": configurations, "cascade_vs_teacher": ratios}

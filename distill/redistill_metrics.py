"""What a re-distillation run tells Prometheus: written as a textfile, and pushed when a Pushgateway is named.

A batch job lives minutes and is gone before Prometheus scrapes it, so its gauges go where a scrape
finds them: ``<state>/redistill.prom`` (node-exporter's textfile collector reads it; the manifests
mount the state folder there) and, with ``--pushgateway``, a Prometheus Pushgateway
(``prometheus_client.push_to_gateway``, job ``cascade_redistill``). The ``CascadeRedistillStale``
alert fires when no run succeeded within its age: a job that silently stopped running or keeps
failing. A run that ended with any outcome but ``failed`` or ``skipped`` succeeded: "rejected" and
"not needed" are the job working.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway, write_to_textfile

JOB = "cascade_redistill"
LAST_SUCCESS = "cascade_redistill_last_success_timestamp_seconds"
NOT_SUCCESS = ("failed", "skipped")


def _last_success(state: Path, outcome: str, ended: float) -> float | None:
    """The end of the last successful run, kept across runs in ``<state>/last_success.json``."""
    path = state / "last_success.json"
    if outcome not in NOT_SUCCESS:
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"ended": ended}), encoding="utf-8")
        os.replace(tmp, path)
        return ended
    try:
        return float(json.loads(path.read_text(encoding="utf-8"))["ended"])
    except (OSError, ValueError, KeyError):
        return None


def run_metrics(
    state: Path,
    *,
    outcome: str,
    outcomes: Sequence[str],
    ended: float,
    new_teacher_labels: int,
    agreement: dict[str, float],
) -> CollectorRegistry:
    """The gauges of one run (and the last success), in a registry of their own."""
    registry = CollectorRegistry()
    Gauge("cascade_redistill_last_run_timestamp_seconds", "When the last redistill run ended.", registry=registry).set(
        ended
    )
    success = _last_success(state, outcome, ended)
    if success is not None:
        Gauge(LAST_SUCCESS, "When the last successful redistill run ended.", registry=registry).set(success)
    last = Gauge("cascade_redistill_last_outcome", "1 for the outcome of the last run.", ["outcome"], registry=registry)
    for name in outcomes:
        last.labels(outcome=name).set(int(name == outcome))
    Gauge("cascade_redistill_new_teacher_labels", "Teacher-labelled texts the last run read.", registry=registry).set(
        new_teacher_labels
    )
    if agreement:
        gauge = Gauge(
            "cascade_redistill_agreement", "Agreement with the teacher on the held-back slice.", ["model"],
            registry=registry,
        )  # fmt: skip
        for model, value in agreement.items():
            gauge.labels(model=model).set(value)
    return registry


def publish(registry: CollectorRegistry, state: Path, pushgateway: str | None) -> Path:
    """Write ``<state>/redistill.prom`` (atomically) and push to ``pushgateway`` when one is named."""
    path = state / "redistill.prom"
    write_to_textfile(str(path), registry)
    if pushgateway:
        push_to_gateway(pushgateway, job=JOB, registry=registry, timeout=10)
    return path


__all__ = ["JOB", "LAST_SUCCESS", "publish", "run_metrics"]

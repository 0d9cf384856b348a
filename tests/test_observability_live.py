"""A live gateway under traffic, its metrics through Ray's pipeline, and a real Prometheus scraping them.

Checks by hand-countable traffic that the exported counters are exact, that the number of series
stays fixed under thousands of distinct requests, and that every dashboard panel and recording rule
returns data from a real Prometheus (skipped with a message where the binary is absent).
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from benchmarks.prometheus_server import start_prometheus
from loadtests import wait_until_settled
from serving import metrics as m
from serving.config import parse_config
from serving.constants import KEEP_TEXT_FOR_REDISTILL
from serving.dashboards import panel_queries
from serving.monitoring import recording_rules
from serving.report import from_metrics_endpoint, from_prometheus, parse_counters, summarise, write_report
from tests.builders import TEXTS, TinyPair
from tests.gateway_helpers import BAD_REQUESTS, gateway_config

pytestmark = pytest.mark.slow  # Ray Serve and a real Prometheus

APP = "cascade-observed"
DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
PROMETHEUS = shutil.which("prometheus")


@dataclass
class Sent:
    """What the test sent and what came back: the figures the metrics must reproduce."""

    texts: int = 0
    served_by: Counter[str] = field(default_factory=Counter)
    escalated: int = 0
    forced: int = 0
    status: Counter[str] = field(default_factory=Counter)


@dataclass
class Observed:
    url: str
    metrics_url: str
    prometheus_url: str | None
    sent: Sent
    traffic_log: Path


def _send(client: httpx.Client, url: str, sent: Sent, payload: dict[str, Any]) -> None:
    response = client.post(f"{url}/v1/classify", json=payload, headers={"X-Request-Id": uuid.uuid4().hex})
    sent.status[f"{response.status_code // 100}xx"] += 1
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    sent.texts += len(results)
    for result in results:
        sent.served_by[result["served_by"]] += 1
        sent.escalated += bool(result["escalated"])
        sent.forced += payload.get("route") == "teacher"


def _traffic(url: str, sent: Sent, requests: int, tag: str, workers: int = 6) -> None:
    """Distinct texts and request ids on every path: auto (some escalate), batches, forced, bad requests."""

    def one(i: int) -> Sent:
        mine = Sent()
        with httpx.Client(timeout=60) as client:
            text = f"{TEXTS[i % len(TEXTS)]} {tag}-{i}"
            if i % 10 == 0:
                _send(client, url, mine, {"inputs": text, "route": "teacher"})
            elif i % 10 == 1:
                _send(client, url, mine, {"inputs": [text, f"{text} again", f"{text} once more"]})
            elif i % 25 == 2:
                name, body, status, _ = BAD_REQUESTS[i % len(BAD_REQUESTS)]
                response = client.post(f"{url}/v1/classify", content=body, headers={"content-type": "application/json"})
                assert response.status_code == status, name
                mine.status[f"{status // 100}xx"] += 1
            else:
                _send(client, url, mine, {"inputs": text})
        return mine

    with ThreadPoolExecutor(workers) as pool:
        for part in pool.map(one, range(requests)):
            sent.texts += part.texts
            sent.served_by.update(part.served_by)
            sent.escalated += part.escalated
            sent.forced += part.forced
            sent.status.update(part.status)


def _scrape(metrics_url: str) -> str:
    """This module's application only: other tests' gateways share the session's Ray and its metrics."""
    lines = httpx.get(metrics_url, timeout=10).text.splitlines()
    return "\n".join(line for line in lines if line.startswith("#") or f'application="{APP}"' in line) + "\n"


def _wait_for_counts(metrics_url: str, texts: int, deadline_s: float = 240) -> dict[str, float]:
    """Wait until the exported counters have caught up with what was sent and stopped moving.

    Converged means: every text counted, and two scrapes one report interval apart (1 s in the
    session's Ray) agree, so shadow calls that finish after their requests are in too. On a busy
    machine Ray's reports lag; the deadline is generous and the caller's assertions say what is short.
    """
    return wait_until_settled(
        lambda: parse_counters(_scrape(metrics_url)),
        lambda counters: counters["requests"] >= texts,
        deadline_s=deadline_s,
        every_s=1.5,
    )


def _series(metrics_url: str) -> set[str]:
    return {line.split(" ")[0] for line in _scrape(metrics_url).splitlines() if line.startswith("ray_cascade_")}


def _start_prometheus(workdir: Path, metrics_port: int) -> tuple[subprocess.Popen[bytes], str]:
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(DEPLOY / "prometheus" / "rules" / "cascade.rules.yml")],
        "scrape_configs": [{"job_name": "cascade", "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}],
    }
    return start_prometheus(config, workdir)


@pytest.fixture(scope="module")
def observed(
    ray_session: int, serve_port: int, tiny_pair: TinyPair, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Observed]:
    from ray import serve

    from distill.calibrate import calibrate_artifacts
    from serving.application import build_app

    workdir = tmp_path_factory.mktemp("observed")
    student = shutil.copytree(tiny_pair.student, workdir / "student")
    calibrate_artifacts(str(tiny_pair.teacher), str(student), tiny_pair.data, "max_escalation", 0.5)
    config = gateway_config(tiny_pair, threshold=0.0, port=serve_port)
    config.update(
        cascade={},  # the student's calibration decides: expected escalation and the PSI reference apply
        shadow={"rate": 0.5, "max_in_flight": 1000},
        drift={"window": 200, "min_samples": 20},
        traffic_log={
            "path": str(workdir / "traffic"),
            "flush_interval_s": 0.5,
            "keep_text": {**KEEP_TEXT_FOR_REDISTILL, "shadow": "hash"},
        },
        student={**config["student"], "model": str(student)},
    )
    prometheus = _start_prometheus(workdir, ray_session) if PROMETHEUS else None
    serve.run(build_app(parse_config(config)), name=APP, route_prefix="/")
    url = f"http://127.0.0.1:{serve_port}"
    sent = Sent()
    try:
        _traffic(url, sent, 300, "warm")
        metrics_url = f"http://127.0.0.1:{ray_session}/metrics"
        yield Observed(url, metrics_url, prometheus[1] if prometheus else None, sent, workdir / "traffic")
    finally:
        serve.delete(APP)
        if prometheus:
            prometheus[0].terminate()
            prometheus[0].wait(timeout=30)


def test_exported_counters_match_the_requests_sent(observed: Observed) -> None:
    sent = observed.sent
    counters = _wait_for_counts(observed.metrics_url, sent.texts)
    assert counters["requests"] == sent.texts
    assert counters["escalated"] == sent.escalated
    assert counters["forced"] == sent.forced
    assert 0 < sent.escalated < sent.texts - sent.forced, "the calibrated threshold should escalate some, not all"
    compared = counters["agree"] + counters["disagree"]
    assert 0 < compared <= sent.served_by["student"]
    assert counters["cost"] > 0
    assert 0 < counters["saved"] <= counters["baseline"]
    families = {line.split("{")[0]: line for line in _scrape(observed.metrics_url).splitlines()}
    for status_class, count in sent.status.items():
        total = sum(
            float(line.rsplit(" ", 1)[1])
            for line in _scrape(observed.metrics_url).splitlines()
            if line.startswith(m.RAY_PREFIX + m.HTTP_RESPONSES) and f'status_class="{status_class}"' in line
        )
        assert total == count, status_class
    for name in (m.CONFIDENCE_PSI, m.EXPECTED_ESCALATION, m.MODEL_INFO, m.QUEUE_DEPTH, m.BATCH_SIZE + "_bucket"):
        assert m.RAY_PREFIX + name in families, f"{name} not exported"

    # The traffic log holds every text the teacher answered, and every shadow comparison.
    from serving.traffic_log import read_traffic_log

    end = time.time() + 20
    while True:
        table, labels = read_traffic_log(observed.traffic_log)
        reasons = Counter(table.column("reason").to_pylist())
        if reasons["shadow"] >= compared or time.time() > end:
            break
        time.sleep(0.5)
    assert reasons["escalation"] == sent.escalated
    assert reasons["forced"] == sent.forced
    assert reasons["shadow"] == compared
    rows = table.to_pylist()
    assert all(r["teacher_logits"] is not None and len(r["teacher_logits"]) == len(labels) for r in rows)
    assert all(r["text"] is None and len(r["text_hash"]) == 64 for r in rows if r["reason"] == "shadow")
    assert all(r["text"] for r in rows if r["reason"] != "shadow")


def test_series_stay_fixed_under_thousands_of_distinct_requests(observed: Observed) -> None:
    sent = observed.sent
    _wait_for_counts(observed.metrics_url, sent.texts)
    before = _series(observed.metrics_url)
    _traffic(observed.url, sent, 2000, "more", workers=8)
    after_counts = _wait_for_counts(observed.metrics_url, sent.texts)
    assert after_counts["requests"] == sent.texts
    after = _series(observed.metrics_url)
    assert after == before, f"new series: {sorted(after - before)[:5]}"
    assert not any("more-" in series or "warm-" in series for series in after), "a text leaked into a label"


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not found: install Debian's `prometheus` package")
def test_every_panel_and_recording_rule_returns_data_from_a_real_prometheus(observed: Observed, tmp_path: Path) -> None:
    assert observed.prometheus_url is not None
    _wait_for_counts(observed.metrics_url, observed.sent.texts)
    queries = [
        (f"{uid}: {title}", expr.replace("$__rate_interval", "1m").replace("$__range", "5m").replace("$cluster", ".*"))
        for uid, title, expr in panel_queries()
    ]
    queries += [(f"rule {rule['record']}", rule["record"]) for rule in recording_rules()["groups"][0]["rules"]]
    empty: list[str] = []
    end = time.time() + 240  # scrapes every second; a loaded machine delays Ray's reports, not their content
    with httpx.Client(base_url=observed.prometheus_url, timeout=10) as client:
        while True:
            # Ray re-sets our gauges as traffic flows (a gauge set during replica start-up is lost),
            # so keep a trickle of requests going while Prometheus catches up.
            with httpx.Client(timeout=60) as gateway:
                _send(gateway, observed.url, observed.sent, {"inputs": f"{TEXTS[0]} trickle-{time.time_ns()}"})
            empty = []
            for name, expr in queries:
                response = client.get("/api/v1/query", params={"query": expr})
                assert response.status_code == 200, f"{name}: {response.text}"
                if not response.json()["data"]["result"]:
                    empty.append(name)
            if not empty or time.time() > end:
                break
            time.sleep(2)
    assert not empty, f"no data for: {empty}"

    # cascade report from the same Prometheus, and from the gateway's own metrics endpoint.
    summary = summarise(from_prometheus(observed.prometheus_url, window_s=120, step_s=5))
    assert summary["totals"]["requests"] > 0
    assert 0 < summary["totals"]["saved_share"] < 1
    png, page = write_report(summary, tmp_path / "report.html", "test")
    assert png.stat().st_size > 10_000 and "cost_per_1000_dollars" in page.read_text()
    polled = summarise(from_metrics_endpoint(observed.metrics_url, duration_s=2, every_s=1))
    assert polled["totals"]["window_s"] >= 1.5

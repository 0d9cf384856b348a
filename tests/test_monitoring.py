"""Metrics bookkeeping, drift statistics, generated rules and dashboards, promtool, and the report's arithmetic."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from router.cost import SavingsCarry
from router.drift import RollingHistogram, population_stability_index
from serving import metrics as m
from serving.dashboards import panel_queries
from serving.metrics import ReplicaMetrics, RequestUsage
from serving.monitoring import alert_rules, generated_files, recording_rules
from serving.promql import metrics_named
from serving.report import COUNTERS, Samples, interval_deltas, parse_counters, summarise
from tests.recorded_metrics import recording_factory, recording_metrics

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not found: install Debian's `prometheus` package (.ci/run does)"
)


def test_psi_is_zero_for_the_same_distribution_and_grows_with_shift() -> None:
    reference = [0.25, 0.25, 0.25, 0.25]
    assert population_stability_index(reference, [10, 10, 10, 10]) == pytest.approx(0.0)
    small = population_stability_index(reference, [12, 10, 10, 8])
    large = population_stability_index(reference, [40, 5, 3, 2])
    assert 0 < small < 0.1 < 0.25 < large
    # By hand: (0.5-0.25)ln2 + (0-0.25)... with the 1e-4 floor on the empty bins.
    expected = 2 * (0.5 - 0.25) * np.log(0.5 / 0.25) + 2 * (1e-4 - 0.25) * np.log(1e-4 / 0.25)
    assert population_stability_index(reference, [5, 0, 0, 5]) == pytest.approx(expected)
    with pytest.raises(ValueError, match="bins differ"):
        population_stability_index(reference, [1, 2])


def test_rolling_histogram_forgets_values_older_than_its_window() -> None:
    histogram = RollingHistogram([0.0, 0.5, 1.0], window=3)
    histogram.add([0.1, 0.2, 0.9])
    assert histogram.counts.tolist() == [2, 1]
    histogram.add([0.8, 0.7])  # evicts 0.1 and 0.2
    assert histogram.counts.tolist() == [0, 3]
    assert len(histogram) == 3
    histogram.add([-5.0, 7.0])  # out of range: the edge bins
    assert histogram.counts.tolist() == [1, 2]


def test_savings_carry_nets_negative_savings_and_never_emits_a_decrease() -> None:
    carry = SavingsCarry()
    emitted = [carry.add(s) for s in (1.0, -0.25, -0.25, 1.0, -2.0, 0.5, 3.0)]
    assert all(e >= 0 for e in emitted)
    assert emitted == [1.0, 0.0, 0.0, 0.5, 0.0, 0.0, 1.5]
    assert sum(emitted) + carry.pending == pytest.approx(3.0)


def test_gateway_metrics_account_cost_savings_and_escalations() -> None:
    metrics, made = recording_metrics()
    metrics.configure(
        student_dollars_per_hour=3600.0,  # $1 per compute second: the arithmetic stays readable
        teacher_dollars_per_hour=36000.0,
        reference={"edges": [0.0, 0.5, 1.0], "shares": [0.5, 0.5]},
        window=10,
        min_samples=4,
    )
    metrics.teacher_seconds_per_text = 0.01  # as if the teacher's warm-up measured it
    # Two texts answered by the student: 2 ms of student time in all.
    metrics.record_request(
        served_by=["student", "student"],
        path="student",
        duration_s=0.02,
        student_confidence=np.array([0.9, 0.8]),
        usage=RequestUsage(student_seconds=0.002),
    )
    cost = made[m.COST].values
    assert cost[(("role", "student"),)] == pytest.approx(0.002)
    assert made[m.COST_BASELINE].values[()] == pytest.approx(2 * 0.01 * 10)
    assert made[m.COST_SAVED].values[()] == pytest.approx(0.2 - 0.002)
    # One text escalated: the teacher ran 20 ms; it cost more than teacher-only, so nothing is saved.
    metrics.record_request(
        served_by=["teacher"],
        path="escalation",
        duration_s=0.05,
        student_confidence=np.array([0.2]),
        usage=RequestUsage(student_seconds=0.001, teacher_seconds=0.02),
    )
    assert made[m.ESCALATIONS].values == {(("reason", "escalation"),): 1}
    assert made[m.REQUESTS].values == {(("served_by", "student"),): 2, (("served_by", "teacher"),): 1}
    assert made[m.COST_SAVED].values[()] == pytest.approx(0.198)  # the loss is carried, not subtracted
    assert metrics.teacher_seconds_per_text == pytest.approx(0.9 * 0.01 + 0.1 * 0.02)
    # Forced to the teacher: the baseline is exactly what it used.
    metrics.record_request(
        served_by=["teacher"],
        path="forced",
        duration_s=0.03,
        student_confidence=None,
        usage=RequestUsage(teacher_seconds=0.03),
    )
    assert made[m.ESCALATIONS].values[(("reason", "forced"),)] == 1
    assert made[m.STUDENT_CONFIDENCE].observations == [0.9, 0.8, 0.2]
    # PSI appears once min_samples confidences arrived (3 so far: none yet).
    assert made[m.CONFIDENCE_PSI].values == {}
    metrics.record_request(
        served_by=["student"],
        path="student",
        duration_s=0.01,
        student_confidence=np.array([0.95]),
        usage=RequestUsage(student_seconds=0.001),
    )
    live = [1, 3]  # 0.2 | 0.9, 0.8, 0.95
    assert made[m.CONFIDENCE_PSI].values[()] == pytest.approx(population_stability_index([0.5, 0.5], live))
    # A shadow comparison is teacher time spent: cost under "shadow", and it lowers the savings.
    before = made[m.COST_SAVED].values[()]
    metrics.record_shadow("agree", teacher_seconds=0.0001, texts=1)
    assert made[m.COST].values[(("role", "shadow"),)] == pytest.approx(0.001)
    assert made[m.SHADOW].values[(("outcome", "agree"),)] == 1
    metrics.record_request(
        served_by=["student"],
        path="student",
        duration_s=0.01,
        student_confidence=np.array([0.9]),
        usage=RequestUsage(student_seconds=0.001),
    )
    assert made[m.COST_SAVED].values[()] > before
    metrics.record_response(503)
    metrics.record_response(200)
    assert made[m.HTTP_RESPONSES].values == {(("status_class", "5xx"),): 1, (("status_class", "2xx"),): 1}


def test_replica_metrics_track_queue_depth_and_model_version() -> None:
    factory, made = recording_factory()
    now = [100.0]
    replica = ReplicaMetrics("student", "3", factory, clock=lambda: now[0])
    assert made[m.MODEL_INFO].values == {}
    replica.queued(5)
    replica.queued(2)
    replica.batch(7)
    assert made[m.QUEUE_DEPTH].values == {(("role", "student"),): 5}  # 7 came within the second
    now[0] += m.QUEUE_DEPTH_EVERY_S
    replica.queued(-5)
    assert made[m.QUEUE_DEPTH].values == {(("role", "student"),): 2}
    replica.queued(-2)
    assert made[m.QUEUE_DEPTH].values == {(("role", "student"),): 0}  # an emptied queue shows at once
    assert made[m.MODEL_INFO].values == {(("role", "student"), ("version", "3")): 1}
    assert made[m.BATCH_SIZE].observations == [7]


class _CountedGauge:
    def __init__(self) -> None:
        self.sets: list[tuple[float, dict[str, str] | None]] = []

    def set(self, value: float, tags: dict[str, str] | None = None) -> None:
        self.sets.append((value, tags))


def test_a_throttled_gauge_publishes_changes_and_refreshes_what_stays() -> None:
    now = [0.0]
    gauge = _CountedGauge()
    throttled = m.ThrottledGauge(gauge, clock=lambda: now[0])
    for _ in range(100):
        throttled.set(0.0, tags={"role": "teacher"})
    throttled.set(1.0, tags={"role": "teacher"})  # a breaker that opens shows at once
    throttled.set(0.0, tags={"role": "student"})  # each label set on its own
    assert gauge.sets == [(0.0, {"role": "teacher"}), (1.0, {"role": "teacher"}), (0.0, {"role": "student"})]
    now[0] += m.GAUGE_REFRESH_S
    throttled.set(1.0, tags={"role": "teacher"})  # unchanged, set again: Ray may have dropped the first
    assert gauge.sets[-1] == (1.0, {"role": "teacher"}) and len(gauge.sets) == 4


def _a_redistill_run(state: Path, outcome: str = "rejected", ended: float = 1_700_000_000.0) -> Any:
    from distill.redistill import OUTCOMES
    from distill.redistill_metrics import run_metrics

    return run_metrics(
        state, outcome=outcome, outcomes=OUTCOMES, ended=ended, new_teacher_labels=12, agreement={"current": 0.9}
    )


class _CountedCounter:
    def __init__(self) -> None:
        self.incs: list[tuple[float, dict[str, str] | None]] = []

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        self.incs.append((value, tags))


def test_a_buffered_counter_sums_increments_per_label_set_and_flushes_them_on_the_event_loop() -> None:
    import asyncio

    counter = _CountedCounter()
    buffered = m.BufferedCounter(counter, every_s=0.05)

    async def requests() -> None:
        for _ in range(3):
            buffered.inc(1, tags={"served_by": "student"})
        buffered.inc(2.5, tags={"served_by": "teacher"})
        buffered.inc(0.5)
        assert counter.incs == []  # nothing reaches Ray's pipeline per request
        async with asyncio.timeout(5):
            while not counter.incs:  # the flush the first increment scheduled
                await asyncio.sleep(0.01)
        buffered.inc(1, tags={"served_by": "student"})  # a later increment schedules the next flush
        async with asyncio.timeout(5):
            while len(counter.incs) < 4:
                await asyncio.sleep(0.01)

    asyncio.run(requests())
    assert counter.incs == [
        (3, {"served_by": "student"}),
        (2.5, {"served_by": "teacher"}),
        (0.5, None),
        (1, {"served_by": "student"}),
    ]
    buffered.inc(4)  # outside an event loop there is no timer to flush later: straight through
    assert counter.incs[-1] == (4, None)


def test_the_gateway_buffers_its_counters_but_not_its_histograms() -> None:
    factory, made = recording_factory()
    metrics = m.GatewayMetrics(factory)
    kinds = {name: m.SPECS[name].kind for name in made}
    buffered = {name for name, metric in metrics._m.items() if isinstance(metric, m.BufferedCounter)}
    assert buffered == {name for name, kind in kinds.items() if kind == "counter"}
    assert buffered and not any(kinds[name] == "histogram" for name in buffered)


def test_every_series_a_rule_or_panel_reads_is_exported_or_recorded() -> None:
    exported = {name for spec in m.SPECS.values() for name in m.exported_name(spec.name, spec.kind)}
    exported |= {metric.name for metric in _a_redistill_run(Path(tempfile.mkdtemp())).collect()}
    recorded = {rule["record"] for rule in recording_rules()["groups"][0]["rules"]}
    expressions = [expr for _, _, expr in panel_queries()]
    expressions += [
        rule["expr"] for group in (recording_rules(), alert_rules()) for rule in group["groups"][0]["rules"]
    ]
    named = set().union(*(metrics_named(expr) for expr in expressions))
    assert named, "the expressions name no metric at all"
    assert named <= exported | recorded, named - exported - recorded
    # And the dashboards show every metric the gateway exports.
    shown = set().union(*(metrics_named(expr) for expr in (e for _, _, e in panel_queries())))
    unshown = {spec.name for spec in m.SPECS.values() if not set(m.exported_name(spec.name, spec.kind)) & shown}
    assert not unshown, f"no panel shows {unshown}"


def test_committed_rules_and_dashboards_are_the_generated_ones() -> None:
    for relative, content in generated_files().items():
        path = DEPLOY / relative
        assert path.exists(), f"{path} missing: run `cascade monitoring --out deploy`"
        assert path.read_text(encoding="utf-8") == content, f"{path} differs: run `cascade monitoring --out deploy`"


@needs_promtool
@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus-ray-cluster.yml"])
def test_promtool_accepts_the_scrape_configs(config: str) -> None:
    result = subprocess.run(
        [str(PROMTOOL), "check", "config", "--syntax-only", str(DEPLOY / "prometheus" / config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_checks_and_unit_tests_the_rules() -> None:
    rules = sorted((DEPLOY / "prometheus" / "rules").glob("*.yml"))
    check = subprocess.run([str(PROMTOOL), "check", "rules", *map(str, rules)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run(
        [str(PROMTOOL), "test", "rules", str(DEPLOY / "prometheus" / "tests" / "alerts.test.yml")],
        capture_output=True,
        text=True,
    )
    assert test.returncode == 0, test.stdout + test.stderr
    assert "SUCCESS" in test.stdout + test.stderr


def test_report_figures_from_counter_samples_survive_a_restart() -> None:
    zeros = np.zeros(4)
    values: dict[str, Any] = {key: zeros.copy() for key in ("escalated", "forced", "baseline", "saved", "disagree")}
    values.update(
        requests=np.array([0.0, 100.0, 200.0, 50.0]),  # restarted before the last sample: +50
        escalated=np.array([0.0, 10.0, 30.0, 5.0]),
        cost=np.array([0.0, 1.0, 2.0, 0.5]),
        baseline=np.array([0.0, 4.0, 8.0, 2.0]),
        saved=np.array([0.0, 3.0, 6.0, 1.5]),
        agree=np.array([0.0, 9.0, 18.0, 4.0]),
        disagree=np.array([0.0, 1.0, 2.0, 1.0]),
    )
    summary = summarise(Samples(np.array([0.0, 10.0, 20.0, 30.0]), values))
    totals = summary["totals"]
    assert totals["requests"] == 250
    assert totals["cost_per_1000_dollars"] == pytest.approx(1000 * 2.5 / 250)
    assert totals["saved_share"] == pytest.approx(7.5 / 10)
    assert totals["escalation_rate"] == pytest.approx(35 / 250)
    assert totals["agreement"] == pytest.approx(22 / 25)
    assert summary["series"]["escalation_rate"].tolist() == pytest.approx([0.1, 0.2, 0.1])


def test_report_deltas_are_per_series_so_one_replica_restart_is_not_a_drop_of_the_total() -> None:
    """Two replicas, one restarts; a third appears mid-window. Summing first would count 310 for the last step."""
    requests = np.array(
        [
            [100.0, 150.0, 10.0],  # replica a: +50, then restarted: +10
            [200.0, 260.0, 300.0],  # replica b: +60, +40
            [np.nan, np.nan, 5.0],  # replica c, new in the last interval: +5
        ]
    )
    assert interval_deltas(requests).tolist() == [110.0, 55.0]
    zeros = np.zeros((1, 3))
    values: dict[str, Any] = dict.fromkeys(COUNTERS, zeros) | {"requests": requests}
    assert summarise(Samples(np.array([0.0, 10.0, 20.0]), values))["totals"]["requests"] == 165.0


def test_report_sums_counters_across_processes_from_a_scrape() -> None:
    text = """# TYPE ray_cascade_requests_total counter
ray_cascade_requests_total{served_by="student",WorkerId="a"} 7.0
ray_cascade_requests_total{served_by="teacher",WorkerId="b"} 3.0
# TYPE ray_cascade_escalations_total counter
ray_cascade_escalations_total{reason="escalation",WorkerId="a"} 2.0
ray_cascade_escalations_total{reason="forced",WorkerId="a"} 1.0
"""
    counters = parse_counters(text)
    assert counters["requests"] == 10
    assert counters["escalated"] == 2
    assert counters["forced"] == 1
    assert counters["agree"] == 0


def _grafana_expand(text: str, environment: dict[str, str]) -> str:
    """Grafana's provisioning expansion: ``$VAR`` and ``${VAR}`` from its environment, nothing else."""
    import re

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: environment.get(m.group(1) or m.group(2), ""), text)


def test_our_datasource_sits_beside_rays_own_provisioning() -> None:
    """Ray's provisioning (what `ray start` writes) and ours together: a URL, unique names, one default."""
    import re

    import yaml
    from ray.dashboard.modules.metrics.templates import GRAFANA_DATASOURCE_TEMPLATE

    ours_text = (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text(encoding="utf-8")
    values = "\n".join(line for line in ours_text.splitlines() if not line.lstrip().startswith("#"))
    assert not re.search(r"\$\{\w+:-", values), "Grafana has no ${VAR:-default}: the URL would come out empty"
    ours = yaml.safe_load(_grafana_expand(ours_text, {"PROMETHEUS_URL": "http://prometheus:9090"}))["datasources"]
    rays = yaml.safe_load(GRAFANA_DATASOURCE_TEMPLATE("Prometheus", "http://127.0.0.1:9090", {}, {}))["datasources"]
    together = ours + rays
    assert [d["url"] for d in ours] == ["http://prometheus:9090"]
    assert len({d["name"] for d in together}) == len(together)
    assert sum(bool(d.get("isDefault")) for d in together) == 1


def test_dashboards_filter_every_series_by_ray_cluster() -> None:
    import json

    for path in (DEPLOY / "grafana" / "dashboards").glob("*.json"):
        board = json.loads(path.read_text(encoding="utf-8"))
        assert "cluster" in [v["name"] for v in board["templating"]["list"]]
        for panel in board["panels"]:
            for target in panel["targets"]:
                for series in re.findall(r"ray_cascade_[a-z_]+(\{[^}]*\})?", target["expr"]):
                    assert 'ray_io_cluster=~"$cluster"' in series, (path.name, target["expr"])


def test_redistill_metrics_reach_a_pushgateway_and_keep_the_last_success(tmp_path: Path) -> None:
    """The job's gauges go to the textfile and, pushed by prometheus_client, to a Pushgateway's HTTP API."""
    import http.server
    import threading

    from distill.redistill_metrics import JOB, LAST_SUCCESS, publish

    received: list[tuple[str, str, bytes]] = []

    class Gateway(http.server.BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            received.append(("PUT", self.path, self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Gateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        publish(_a_redistill_run(tmp_path), tmp_path, f"127.0.0.1:{server.server_port}")
        failed = _a_redistill_run(tmp_path, outcome="failed", ended=1_700_009_999.0)
        publish(failed, tmp_path, None)
    finally:
        server.shutdown()
    ((method, path, body),) = received
    assert (method, path) == ("PUT", f"/metrics/job/{JOB}")
    assert f"{LAST_SUCCESS} 1.7e+09" in body.decode()
    text = (tmp_path / "redistill.prom").read_text()
    # A failed run updates the last run, not the last success.
    assert "cascade_redistill_last_run_timestamp_seconds 1.700009999e+09" in text
    assert f"{LAST_SUCCESS} 1.7e+09" in text
    assert 'cascade_redistill_last_outcome{outcome="failed"} 1.0' in text

"""``cascade loadtest``: teacher only, student only and the cascade, side by side, in one run.

One gateway (``cascade serve --direct-student``) serves all three configurations; the request's
``route`` selects one (``teacher`` / ``student`` / ``auto``), so models, replicas, hardware and Ray
Serve settings are identical by construction. For each configuration the offered rate climbs
(open loop: Locust users at a constant throughput each) until p99 latency passes the target,
errors pass 1%, or the gateway falls behind the offered rate; the **sustained throughput** is the
highest offered rate that passed. The whole sequence repeats ``repeats`` times; the report quotes
medians over repeats and ratios measured within each repeat.

Also measured, in the same run:

- the **routing overhead**: p50 latency of one request at a time through the router with everything
  answered by the student (``route: student``, the τ = 0 path) against the student's deployment
  called directly through Ray Serve's proxy (``/direct/student``), alternated ``repeats`` times;
- the **generator's ceiling**: Locust against a no-op endpoint on the same cores as the gateway;
- **cost per 1,000 requests**: the gateway's own cost counters (Prometheus text from its metrics
  endpoint), read before and after each configuration.

Latencies and accuracy come from every request's record (Locust writes one JSON line per request),
not from Locust's rounded summaries. Only HTTP reaches the gateway: nothing of it is imported here.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

from loadtests import free_port

CONFIGURATIONS = {"teacher_only": "teacher", "student_only": "student", "cascade": "auto"}
LOCUSTFILE = Path(__file__).with_name("locustfile.py")


@dataclass
class LoadTestSettings:
    teacher: str
    student: str
    dataset: Path
    output: Path
    p99_target_ms: float = 300.0
    extra_p99_targets_ms: Sequence[float] = ()
    """More targets read off the same run: the ramp goes on until the largest one fails too."""
    start_rate: float = 10.0
    growth: float = 1.5
    max_rate: float = 3000.0
    stage_seconds: float = 15.0
    warmup_seconds: float = 3.0
    repeats: int = 3
    texts_per_request: int = 1
    rate_per_user: float = 2.0
    overhead_requests: int = 300
    threshold: float | None = None
    student_price: float = 0.08925
    teacher_price: float = 0.08925
    model_threads: int = 1
    colocate_student: bool = False
    gateway_cpus: str | None = None
    generator_cpus: str | None = None
    max_error_rate: float = 0.01
    startup_timeout_s: float = 300.0
    configurations: Sequence[str] = tuple(CONFIGURATIONS)

    def __post_init__(self) -> None:
        unknown = set(self.configurations) - set(CONFIGURATIONS)
        if unknown:
            raise ValueError(f"configurations must be among {sorted(CONFIGURATIONS)}, got {sorted(unknown)}")
        if self.growth <= 1:
            raise ValueError(f"growth must be > 1, got {self.growth}")


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


def default_core_split() -> tuple[str | None, str | None]:
    """With 4 cores or more: the generator on the last, the gateway on the rest. Fewer: all shared.

    On 2 cores a gateway pinned to one core is starved by Ray's own processes (measured: under
    20 req/s at p99 300 ms for every configuration), so both share both cores and the report gives
    the generator's measured CPU time instead.
    """
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 4 or shutil.which("taskset") is None:
        return None, None
    return ",".join(map(str, cores[:-1])), str(cores[-1])


def _pinned(command: list[str], cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus, *command] if cpus else command


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


class Harness:
    """Starts what it measures, measures it, and stops everything it started."""

    def __init__(self, settings: LoadTestSettings, log: Any = print) -> None:
        self.s = settings
        self.log = log
        self.work = Path(tempfile.mkdtemp(prefix="cascade-loadtest-"))
        self.processes: list[subprocess.Popen[bytes]] = []
        self.generator_cpu_s = 0.0
        self.generator_wall_s = 0.0

    # --- processes ------------------------------------------------------------------------------

    def _start(self, command: list[str], cpus: str | None, log_name: str) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            _pinned(command, cpus),
            stdout=(self.work / log_name).open("wb"),
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.processes.append(process)
        return process

    def _stop(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.remove(process)

    def close(self) -> None:
        for process in list(self.processes):
            self._stop(process)

    def _wait_http(self, url: str, deadline_s: float, process: subprocess.Popen[bytes], log_name: str) -> None:
        end = time.time() + deadline_s
        while time.time() < end:
            if process.poll() is not None:
                raise RuntimeError(f"{log_name} exited: {(self.work / log_name).read_text()[-3000:]}")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{url} not ready within {deadline_s:.0f} s; log: {self.work / log_name}")

    def start_gateway(self) -> tuple[str, str]:
        port, metrics_port = free_port(), free_port()
        role = {
            "threads": self.s.model_threads,
            "batching": {"max_batch_size": 32, "batch_wait_timeout_s": 0.005},
            # num_cpus 0: Ray must not refuse the third replica (student, teacher, direct student) on a
            # 2-core node; the cores are shared and pinned by taskset instead.
            "deployment": {"num_cpus": 0, "max_ongoing_requests": 64, "max_queued_requests": 4096},
        }
        config = {
            "http": {"host": "127.0.0.1", "port": port},
            "metrics": {"port": metrics_port},
            "limits": {"max_inputs": max(64, self.s.texts_per_request)},
            "cascade": {} if self.s.threshold is None else {"threshold": self.s.threshold},
            "cost": {
                "student_dollars_per_hour": self.s.student_price,
                "teacher_dollars_per_hour": self.s.teacher_price,
            },
            "shadow": {"rate": 0.0},
            "student": {"model": self.s.student, "colocate": self.s.colocate_student, **role},
            "teacher": {"model": self.s.teacher, **role},
        }
        path = self.work / "gateway.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        command = [sys.executable, "-m", "serving.cli", "serve", "--config", str(path), "--direct-student"]
        process = self._start(command, self.s.gateway_cpus, "gateway.log")
        url = f"http://127.0.0.1:{port}"
        self._wait_http(f"{url}/readyz", self.s.startup_timeout_s, process, "gateway.log")
        self.gateway = process
        return url, f"http://127.0.0.1:{metrics_port}/metrics"

    # --- Locust ---------------------------------------------------------------------------------

    def locust(
        self,
        host: str,
        *,
        users: int,
        seconds: float,
        rate_per_user: float,
        route: str = "auto",
        path: str = "/v1/classify",
        dataset: Path | None = None,
        extra_env: dict[str, str] | None = None,
        max_requests: int = 1_000_000,
    ) -> tuple[list[dict[str, Any]], float]:
        """One headless Locust run; returns its per-request records and its start time."""
        results = self.work / f"locust-{time.time_ns()}.jsonl"
        env = {
            **os.environ,
            "CASCADE_DATASET": str(dataset or self.s.dataset),
            "CASCADE_ROUTE": route,
            "CASCADE_PATH": path,
            "CASCADE_RATE_PER_USER": str(rate_per_user),
            "CASCADE_TEXTS_PER_REQUEST": str(self.s.texts_per_request),
            "CASCADE_RESULTS": str(results),
            "CASCADE_MAX_REQUESTS": str(max_requests),
            **(extra_env or {}),
        }
        env.pop("CASCADE_SCENARIO", None)
        locust = shutil.which("locust", path=str(Path(sys.executable).parent)) or "locust"
        command = [
            locust,
            "-f",
            str(LOCUSTFILE),
            "--headless",
            "--host",
            host,
            "-u",
            str(users),
            "-r",
            str(max(users, 1)),
            "-t",
            f"{math.ceil(seconds)}s",
            "--only-summary",
            "--loglevel",
            "ERROR",
            "--stop-timeout",
            "5",
        ]
        started = time.time()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        completed = subprocess.run(
            _pinned(command, self.s.generator_cpus), env=env, capture_output=True, text=True, check=False
        )
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.generator_cpu_s += (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        self.generator_wall_s += time.time() - started
        if not results.exists():
            raise RuntimeError(f"locust wrote no results (exit {completed.returncode}): {completed.stderr[-2000:]}")
        records = [json.loads(line) for line in results.read_text(encoding="utf-8").splitlines() if line]
        results.unlink()
        return records, started

    def run_stage(self, host: str, repeat: int, configuration: str, offered: float) -> tuple[Stage, list[Any]]:
        users = max(1, math.ceil(offered / self.s.rate_per_user))
        rate_per_user = offered / users
        records, started = self.locust(
            host,
            users=users,
            seconds=self.s.stage_seconds,
            rate_per_user=rate_per_user,
            route=CONFIGURATIONS[configuration],
        )
        stats = stage_stats(records, started, self.s.warmup_seconds, self.s.stage_seconds)
        passed = self.passes(stats, offered, self.s.p99_target_ms)
        stage = Stage(repeat, configuration, offered, passed=passed, **stats)  # type: ignore[arg-type]
        return stage, records

    def passes(self, stats: dict[str, Any], offered: float, target_ms: float) -> bool:
        return bool(
            stats["p99_ms"] <= target_ms
            and stats["error_rate"] <= self.s.max_error_rate
            # within 10% of the offered rate, with one request of slack for short windows
            and stats["achieved_rps"] >= 0.9 * offered - 1 / (self.s.stage_seconds - self.s.warmup_seconds)
        )

    def ramp(
        self, host: str, metrics_url: str, repeat: int, configuration: str, teacher: dict[int, str] | None
    ) -> tuple[ConfigurationRun, list[Any]]:
        run = ConfigurationRun(repeat, configuration)
        all_records: list[Any] = []
        dollars_before, texts_before = cost_counters(metrics_url)
        offered = self.s.start_rate
        targets = [self.s.p99_target_ms, *self.s.extra_p99_targets_ms]
        still_passing = dict.fromkeys(targets, True)
        run.sustained_rps_by_target = {f"{t:g}": 0.0 for t in targets}
        while offered <= self.s.max_rate and any(still_passing.values()):
            stage, records = self.run_stage(host, repeat, configuration, offered)
            run.stages.append(stage)
            all_records += records
            for target in targets:
                if still_passing[target] and self.passes(asdict(stage), offered, target):
                    run.sustained_rps_by_target[f"{target:g}"] = offered
                else:
                    still_passing[target] = False
            if still_passing[self.s.p99_target_ms]:
                run.sustained_rps, run.at_sustained = offered, stage
            mark = "ok" if stage.passed else "over"
            self.log(
                f"  [repeat {repeat}] {configuration:<12} offered {offered:7.1f}/s → {stage.achieved_rps:7.1f}/s  "
                f"p50 {stage.p50_ms:6.1f}  p99 {stage.p99_ms:7.1f} ms  errors {100 * stage.error_rate:4.1f}%  "
                f"escalated {100 * stage.escalation_rate:4.1f}%  {mark}"
            )
            offered = round(offered * self.s.growth, 1)
        time.sleep(2.5)  # one metrics report interval of the gateway's processes
        dollars_after, texts_after = cost_counters(metrics_url)
        if texts_after > texts_before:
            run.cost_per_1000_dollars = 1000 * (dollars_after - dollars_before) / (texts_after - texts_before)
        measured = quality(all_records, teacher)
        run.accuracy, run.agreement_with_teacher = measured["accuracy"], measured["agreement"]
        run.answers = answers(all_records)
        ok = [r for r in all_records if r["status"] == 200]
        texts = sum(len(r["escalated"]) for r in ok)
        run.escalation_rate = sum(sum(r["escalated"]) for r in ok) / texts if texts else 0.0
        return run, all_records

    def overhead(self, host: str) -> dict[str, Any]:
        """p50 latency, one request at a time: router with the student answering vs the student directly."""
        runs = []
        seconds = 3600.0  # bounded by the request count, not the clock
        for repeat in range(1, self.s.repeats + 1):
            pair = {}
            for name, route, path in (
                ("router_tau0", "student", "/v1/classify"),
                ("student_direct", "student", "/direct/student"),
            ):
                records, _ = self.locust(
                    host,
                    users=1,
                    seconds=seconds,
                    rate_per_user=0,
                    route=route,
                    path=path,
                    max_requests=self.s.overhead_requests,
                )
                ok = [r["ms"] for r in records[20:] if r["status"] == 200]  # the first 20: connection warm-up
                pair[name] = percentile(ok, 50)
            pair["overhead_share"] = pair["router_tau0"] / pair["student_direct"] - 1
            self.log(
                f"  [repeat {repeat}] overhead: router (τ=0) p50 {pair['router_tau0']:.2f} ms, "
                f"student direct p50 {pair['student_direct']:.2f} ms → +{100 * pair['overhead_share']:.1f}%"
            )
            runs.append(pair)
        return {
            "runs": runs,
            "median_router_tau0_p50_ms": statistics.median(r["router_tau0"] for r in runs),
            "median_student_direct_p50_ms": statistics.median(r["student_direct"] for r in runs),
            "median_overhead_share": statistics.median(r["overhead_share"] for r in runs),
        }

    def generator_ceiling(self) -> dict[str, Any]:
        """Locust's own maximum: no-wait users against a no-op endpoint on the gateway's cores."""
        port = free_port()
        server = self._start(
            [sys.executable, "-m", "loadtests.noop_server", "--port", str(port)], self.s.gateway_cpus, "noop.log"
        )
        try:
            self._wait_http(f"http://127.0.0.1:{port}/", 30, server, "noop.log")
            users = 32
            records, started = self.locust(
                f"http://127.0.0.1:{port}", users=users, seconds=self.s.stage_seconds, rate_per_user=0
            )
            stats = stage_stats(records, started, self.s.warmup_seconds, self.s.stage_seconds)
        finally:
            self._stop(server)
        self.log(f"  generator ceiling: {stats['achieved_rps']:.0f} req/s against a no-op endpoint ({users} users)")
        return {"users": users, "requests_per_s": stats["achieved_rps"], "p50_ms": stats["p50_ms"]}


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("ray", "locust", "torch", "onnxruntime", "transformers"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


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


def write_outputs(result: dict[str, Any], stages: list[Stage], output: Path) -> list[Path]:
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output.mkdir(parents=True, exist_ok=True)
    json_path, csv_path, png_path = output / "loadtest.json", output / "loadtest.csv", output / "loadtest.png"
    json_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(asdict(stages[0])))
        writer.writeheader()
        for stage in stages:
            writer.writerow(asdict(stage))

    figure, (curve, bars) = plt.subplots(1, 2, figsize=(12, 4.8))
    colours = {"teacher_only": "tab:red", "student_only": "tab:green", "cascade": "tab:blue"}
    for configuration, colour in colours.items():
        mine = [s for s in stages if s.configuration == configuration]
        for repeat in sorted({s.repeat for s in mine}):
            points = [s for s in mine if s.repeat == repeat]
            curve.plot(
                [s.achieved_rps for s in points],
                [s.p99_ms for s in points],
                marker="o",
                color=colour,
                alpha=0.8,
                label=configuration if repeat == 1 else None,
            )
    target = result["settings"]["p99_target_ms"]
    curve.axhline(target, color="grey", linestyle="--", label=f"p99 target {target:.0f} ms")
    curve.set_xlabel("achieved requests/s")
    curve.set_ylabel("p99 latency (ms)")
    curve.set_yscale("log")
    curve.set_title("p99 latency vs throughput (each stage)")
    curve.legend()
    curve.grid(alpha=0.3)
    names = list(result["summary"]["configurations"])
    sustained = [result["summary"]["configurations"][n]["sustained_rps"] or 0 for n in names]
    cost = [result["summary"]["configurations"][n]["cost_per_1000_dollars"] or 0 for n in names]
    x = np.arange(len(names))
    bars.bar(x - 0.2, sustained, 0.4, color=[colours[n] for n in names], label="sustained req/s")
    bars.set_ylabel("sustained requests/s at the p99 target (median)")
    bars.set_xticks(x, names)
    twin = bars.twinx()
    twin.bar(x + 0.2, [1000 * c for c in cost], 0.4, color="lightgrey", edgecolor="black", label="cost / 1,000 (m$)")
    twin.set_ylabel("cost per 1,000 requests (milli-dollars)")
    bars.set_title("sustained throughput (colour) and cost (grey)")
    figure.tight_layout()
    figure.savefig(png_path, dpi=110)
    plt.close(figure)
    return [json_path, csv_path, png_path, write_markdown(result, output)]


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _percent(share: float | None) -> float | None:
    return None if share is None else 100 * share


def write_markdown(result: dict[str, Any], output: Path) -> Path:
    """A readable summary beside the JSON, CSV and PNG."""
    summary, settings, overhead = result["summary"], result["settings"], result["overhead"]
    rows = []
    for name, c in summary["configurations"].items():
        rows.append(
            f"| {name} | {_fmt(c['sustained_rps'])} | {_fmt(c['p50_ms_at_sustained'])} / "
            f"{_fmt(c['p95_ms_at_sustained'])} / {_fmt(c['p99_ms_at_sustained'])} | "
            f"{_fmt(_percent(c['error_rate_at_sustained']), '.2f')} | "
            f"{_fmt(c['escalation_rate'], '.3f')} | {_fmt(c['accuracy'], '.4f')} | "
            f"{_fmt(c['agreement_with_teacher'], '.4f')} | {_fmt(c['cost_per_1000_dollars'], '.3e')} |"
        )
    ratios = summary.get("cascade_vs_teacher") or {}
    per_repeat = "\n".join(
        f"| {r['repeat']} | {_fmt(r['throughput_ratio'], '.2f')} | {_fmt(r['accuracy_gap_points'], '.2f')} | "
        f"{_fmt(r['cost_ratio'], '.3f')} |"
        for r in ratios.get("per_repeat", [])
    )
    overhead_rows = "\n".join(
        f"| {i} | {r['router_tau0']:.2f} | {r['student_direct']:.2f} | {100 * r['overhead_share']:+.1f}% |"
        for i, r in enumerate(overhead["runs"], start=1)
    )
    machine, versions = result["machine"], ", ".join(f"{k} {v}" for k, v in result["versions"].items())
    ceiling = result["generator_ceiling"]["requests_per_s"]
    throughput_ratio = _fmt(ratios.get("median_throughput_ratio"), ".2f")
    gap = _fmt(ratios.get("median_accuracy_gap_points"), ".2f")
    cost_ratio = _fmt(ratios.get("median_cost_ratio"), ".3f")
    by_target = ", ".join(
        f"{target}: ×{_fmt(value, '.2f')}"
        for target, value in (ratios.get("median_throughput_ratio_by_p99_target_ms") or {}).items()
    )
    header = (
        "| configuration | sustained req/s at p99 target | p50 / p95 / p99 ms at that rate | errors % "
        "| escalation | accuracy | agreement with teacher | $ per 1,000 |"
    )
    text = f"""# Load test: teacher only vs student only vs the cascade

Command: `{result["command"]}`

Machine: {machine["cpus"]} CPUs ({machine["processor"]}, {machine["platform"]}); gateway on CPUs
{machine["core_split"]["gateway"]}, Locust on CPUs {machine["core_split"]["load_generator"]} (Locust used
{machine["core_split"]["load_generator_cores_used"]:.2f} of a core on average while it ran). Versions:
{versions}.
Load generator ceiling (Locust against a no-op endpoint, same split): **{ceiling:.0f} req/s**.

Settings: p99 target {settings["p99_target_ms"]:.0f} ms; offered rate from {settings["start_rate"]} req/s
×{settings["growth"]} per stage of {settings["stage_seconds"]:.0f} s (first {settings["warmup_seconds"]:.0f} s not
counted); {settings["texts_per_request"]} text(s) per request; {settings["repeats"]} repeats; prices
${settings["student_price"]}/h student, ${settings["teacher_price"]}/h teacher.
Teacher `{settings["teacher"]}`, student `{settings["student"]}`, traffic `{settings["dataset"]}`.

## Per configuration (medians over repeats)

{header}
| --- | --- | --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}

## Cascade against teacher only, per repeat

| repeat | throughput × | accuracy gap (points) | cost ratio |
| --- | --- | --- | --- |
{per_repeat}

Medians: throughput **×{throughput_ratio}**, accuracy gap **{gap} points**, cost ratio **{cost_ratio}**.
Throughput ratio read off the same run at each p99 target (ms): {by_target}. The accuracy gap is
paired: teacher minus cascade on the distinct texts both answered in that repeat.

## Routing overhead (one request at a time, p50)

| repeat | router, τ = 0 path (ms) | student deployment direct (ms) | overhead |
| --- | --- | --- | --- |
{overhead_rows}

Median overhead: **{100 * overhead["median_overhead_share"]:+.1f}%** of the student-direct p50
({overhead["median_router_tau0_p50_ms"]:.2f} ms vs {overhead["median_student_direct_p50_ms"]:.2f} ms).

Every stage is in `loadtest.csv`; the figure is `loadtest.png`.
"""
    path = output / "loadtest.md"
    path.write_text(text, encoding="utf-8")
    return path


def run_loadtest(settings: LoadTestSettings, log: Any = print) -> dict[str, Any]:
    """The whole benchmark: ceiling, then per repeat the three configurations, then the overhead."""
    if settings.gateway_cpus is None and settings.generator_cpus is None:
        settings.gateway_cpus, settings.generator_cpus = default_core_split()
    harness = Harness(settings, log)
    log(
        f"cascade loadtest: gateway on CPUs {settings.gateway_cpus or 'all'}, "
        f"Locust on CPUs {settings.generator_cpus or 'all'}; work folder {harness.work}"
    )
    runs: list[ConfigurationRun] = []
    try:
        ceiling = harness.generator_ceiling()
        url, metrics_url = harness.start_gateway()
        models = httpx.get(f"{url}/v1/models", timeout=10).json()
        log(f"  gateway ready at {url}")
        for repeat in range(1, settings.repeats + 1):
            teacher: dict[int, str] | None = None
            for configuration in settings.configurations:
                run, records = harness.ramp(url, metrics_url, repeat, configuration, teacher)
                if configuration == "teacher_only":
                    teacher = teacher_answers(records)
                runs.append(run)
                log(
                    f"[repeat {repeat}] {configuration}: sustained {run.sustained_rps:.1f} req/s, accuracy "
                    f"{run.accuracy}, escalation {run.escalation_rate:.3f}, $/1000 {run.cost_per_1000_dollars}"
                )
        overhead = harness.overhead(url)
        generator_share = harness.generator_cpu_s / max(1e-9, harness.generator_wall_s)
        log(f"  the load generator used {generator_share:.2f} of a core on average while it ran")
    finally:
        harness.close()
    cores = sorted(os.sched_getaffinity(0))
    result = {
        # A wrapper script that prepared the models names itself in CASCADE_REPRODUCE.
        "command": os.environ.get("CASCADE_REPRODUCE") or "cascade " + " ".join(sys.argv[1:]),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": len(cores),
            "core_split": {
                "gateway": settings.gateway_cpus or "all (shared)",
                "load_generator": settings.generator_cpus or "all (shared)",
                "load_generator_cores_used": round(generator_share, 3),
            },
        },
        "versions": _versions(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()},
        "models": models,
        "generator_ceiling": ceiling,
        "summary": summarise(runs),
        "overhead": overhead,
        "runs": [{k: v for k, v in asdict(run).items() if k != "stages"} for run in runs],
    }
    stages = [stage for run in runs for stage in run.stages]
    for path in write_outputs(result, stages, settings.output):
        log(f"wrote {path}")
    shutil.rmtree(harness.work, ignore_errors=True)
    return result


__all__ = ["CONFIGURATIONS", "LoadTestSettings", "run_loadtest", "stage_stats", "summarise"]

"""The side-by-side load driver: Locust against a running gateway's URL, stage by stage, over HTTP only.

For each configuration (selected by the request's ``route``) the offered rate climbs (open loop:
Locust users at a constant throughput each) until p99 latency passes the target, errors pass 1%, or
the gateway falls behind the offered rate; the **sustained throughput** is the highest offered rate
that passed. Also: the routing overhead (one request at a time, the router's τ = 0 path against the
student's deployment straight through the proxy), and the generator's own ceiling against
``loadtests/noop_server.py``. Starting the gateway is the caller's business
(``benchmarks/loadtest.py``): nothing of the gateway is imported here.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from loadtests import wait_until_settled
from loadtests.stats import ConfigurationRun, Stage, answers, cost_counters, percentile, quality, stage_stats

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
    student_price: float | None = None
    teacher_price: float | None = None
    """$/hour per role for the gateway's cost counters; None: the gateway's own defaults."""
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


def settled_cost_counters(
    metrics_url: str, at_least_texts: float, *, deadline_s: float = 60.0, every_s: float = 2.5
) -> tuple[float, float]:
    """The gateway's cost counters once every answered text is counted and two scrapes agree (or at the deadline).

    ``every_s`` is longer than one metrics report interval of the gateway's processes (2 s).
    """
    return wait_until_settled(
        lambda: cost_counters(metrics_url),
        lambda counters: counters[1] >= at_least_texts,
        deadline_s=deadline_s,
        every_s=every_s,
    )


RUN_MARGIN_S = 1.0
"""Locust runs this much longer than a stage asks: its users start within a second of its own start,
and the stage's window, counted from the first request, must end before Locust stops."""


class LoadDriver:
    """Drives a running gateway with Locust; stops every helper process it started itself (the no-op server)."""

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

    def _reported_port(self, process: subprocess.Popen[bytes], log_name: str, *, deadline_s: float) -> int:
        """The port a server bound itself (``--port 0``) and printed as ``port N``: no port chosen here
        can be taken by another process before the server binds it."""
        end = time.time() + deadline_s
        while time.time() < end and process.poll() is None:
            for line in (self.work / log_name).read_text(encoding="utf-8", errors="replace").splitlines():
                if line.startswith("port "):
                    return int(line.split()[1])
            time.sleep(0.1)
        raise RuntimeError(f"{log_name}: the server printed no port within {deadline_s:g} s (exit {process.poll()})")

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
            f"{math.ceil(seconds + RUN_MARGIN_S)}s",
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
        # The run starts when Locust sent its first request, not when its process was launched: its
        # start-up (imports, a second or more on a busy machine) would otherwise eat into the measured
        # window. Locust runs RUN_MARGIN_S longer than asked, so that the window still ends in its run.
        return records, min((record["t"] for record in records), default=started)

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
        ok = [r for r in all_records if r["status"] == 200]
        answered = sum(len(r["escalated"]) for r in ok)
        dollars_after, texts_after = settled_cost_counters(metrics_url, texts_before + answered)
        if texts_after > texts_before:
            run.cost_per_1000_dollars = 1000 * (dollars_after - dollars_before) / (texts_after - texts_before)
        measured = quality(all_records, teacher)
        run.accuracy, run.agreement_with_teacher = measured["accuracy"], measured["agreement"]
        run.answers = answers(all_records)
        run.escalation_rate = sum(sum(r["escalated"]) for r in ok) / answered if answered else 0.0
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
        server = self._start(
            [sys.executable, "-m", "loadtests.noop_server", "--port", "0"], self.s.gateway_cpus, "noop.log"
        )
        try:
            port = self._reported_port(server, "noop.log", deadline_s=30)
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

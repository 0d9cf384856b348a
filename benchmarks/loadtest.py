"""``cascade loadtest``: the serving path beside its references (default), or the open-loop ramp (``--ramp``).

The side-by-side run is ``benchmarks.serving_path``'s. The ramp: teacher only, student only and the
cascade, side by side, in one run.

One gateway (``cascade serve --direct-student``, started here through ``serving.process``) serves
all three configurations; the request's ``route`` selects one, so models, replicas, hardware and
Ray Serve settings are identical by construction. The driving and the statistics are
``loadtests``'s (HTTP only); this module starts and stops what they measure. The whole sequence
repeats ``repeats`` times; the report quotes medians over repeats and ratios within each repeat.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

from benchmarks.serving_path import ServingPathSettings, run_serving_path
from loadtests.driver import LoadDriver, LoadTestSettings, default_core_split
from loadtests.report import package_versions, write_outputs, write_side_by_side
from loadtests.stats import ConfigurationRun, summarise, teacher_answers
from serving.ports import free_local_port
from serving.process import GatewayProcess


def start_gateway(settings: LoadTestSettings, work: Path) -> tuple[GatewayProcess, str]:
    """``cascade serve --direct-student`` with the load test's settings, pinned to the gateway's cores.

    Returns the ready gateway and the URL of its metrics (a private Ray's metrics agent).
    """
    port, metrics_port = free_local_port(), free_local_port()
    role = {
        "threads": settings.model_threads,
        "batching": {"max_batch_size": 32, "batch_wait_timeout_s": 0.0},
        # num_cpus 0: Ray must not refuse the third replica (student, teacher, direct student) on a
        # 2-core node; the cores are shared and pinned by taskset instead.
        "deployment": {"num_cpus": 0, "max_ongoing_requests": 64, "max_queued_requests": 4096},
    }
    config = {
        "http": {"host": "127.0.0.1", "port": port},
        "metrics": {"port": metrics_port},
        "limits": {"max_inputs": max(64, settings.texts_per_request)},
        "cascade": {} if settings.threshold is None else {"threshold": settings.threshold},
        "cost": {
            key: price
            for key, price in (
                ("student_dollars_per_hour", settings.student_price),
                ("teacher_dollars_per_hour", settings.teacher_price),
            )
            if price is not None
        },
        "shadow": {"rate": 0.0},
        "student": {"model": settings.student, "colocate": settings.colocate_student, **role},
        "teacher": {"model": settings.teacher, **role},
    }
    path = work / "gateway.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    gateway = GatewayProcess(
        path,
        work / "gateway.log",
        port=port,
        extra_args=["--direct-student"],
        cpus=settings.gateway_cpus,
        startup_timeout_s=settings.startup_timeout_s,
    )
    return gateway, f"http://127.0.0.1:{metrics_port}/metrics"


def _machine(gateway_cpus: str | None, generator_cpus: str | None, generator_share: float) -> dict[str, Any]:
    cores = sorted(os.sched_getaffinity(0))
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": len(cores),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "core_split": {
            "gateway": gateway_cpus or "all (shared)",
            "load_generator": generator_cpus or "all (shared)",
            "load_generator_cores_used": round(generator_share, 3),
        },
    }


def run_side_by_side(settings: ServingPathSettings, dataset: Path, output: Path, log: Any = print) -> dict[str, Any]:
    """``cascade loadtest``: the generator's ceiling, then every server of the side-by-side run in turn."""
    driver = LoadDriver(LoadTestSettings(settings.teacher, settings.student, dataset, output), log)
    log(f"cascade loadtest (side by side): work folder {driver.work}")
    texts = [json.loads(line)["text"] for line in dataset.read_text(encoding="utf-8").splitlines() if line.strip()]
    try:
        ceiling = driver.generator_ceiling()
        measured = run_serving_path(settings, driver, texts, log)
    finally:
        driver.close()
    generator_share = driver.generator_cpu_s / max(1e-9, driver.generator_wall_s)
    result = {
        "command": os.environ.get("CASCADE_REPRODUCE") or "cascade " + " ".join(sys.argv[1:]),
        "machine": _machine(None, None, generator_share),
        "versions": package_versions(),
        "settings": {**asdict(settings), "dataset": str(dataset)},
        "generator_ceiling": ceiling,
        **measured,
    }
    for path in write_side_by_side(result, output):
        log(f"wrote {path}")
    shutil.rmtree(driver.work, ignore_errors=True)
    return result


def run_loadtest(settings: LoadTestSettings, log: Any = print) -> dict[str, Any]:
    """The whole benchmark: ceiling, then per repeat the three configurations, then the overhead."""
    if settings.gateway_cpus is None and settings.generator_cpus is None:
        settings.gateway_cpus, settings.generator_cpus = default_core_split()
    harness = LoadDriver(settings, log)
    log(
        f"cascade loadtest: gateway on CPUs {settings.gateway_cpus or 'all'}, "
        f"Locust on CPUs {settings.generator_cpus or 'all'}; work folder {harness.work}"
    )
    runs: list[ConfigurationRun] = []
    gateway: GatewayProcess | None = None
    try:
        ceiling = harness.generator_ceiling()
        gateway, metrics_url = start_gateway(settings, harness.work)
        url = gateway.url
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
        if gateway is not None:
            gateway.stop()
        harness.close()
    result = {
        # A wrapper script that prepared the models names itself in CASCADE_REPRODUCE.
        "command": os.environ.get("CASCADE_REPRODUCE") or "cascade " + " ".join(sys.argv[1:]),
        "machine": _machine(settings.gateway_cpus, settings.generator_cpus, generator_share),
        "versions": package_versions(),
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


__all__ = ["LoadTestSettings", "run_loadtest", "run_side_by_side"]

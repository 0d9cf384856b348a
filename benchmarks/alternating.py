"""Gateway variants that differ by environment, measured in alternating pairs: a change judged by hand.

    python -m benchmarks.alternating --teacher T --student S --dataset traffic.jsonl \\
        --variant baseline --variant "one HAProxy thread:RAY_SERVE_HAPROXY_NBTHREAD=1" --pairs 3

This machine's speed wanders (one configuration measured 0.71 to 1.11 ms of CPU per request within an
hour), so two variants are compared by windows run back to back, in alternation, each on a fresh
``cascade serve`` (the student inside the ingress, Ray's HAProxy, the load test's settings): closed
loop Locust users on one route, then requests/s, p50 and p99, and the CPU per answered request of the
ingress replica and of all the gateway's processes. A variant is ``name`` or ``name:VAR=value,...``:
environment for ``cascade serve`` and the Ray it starts (``RAY_*`` settings, or anything else read
from the environment). Prints one line per window and a summary; writes nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.profile_path import INGRESS_PROCESS, cpu_by_process, cpu_spent
from benchmarks.serving_path import ServingPathSettings, gateway_config
from loadtests.driver import LoadDriver, LoadTestSettings
from loadtests.stats import stage_stats
from serving.process import GatewayProcess

WARMUP_S = 3.0


@dataclass(frozen=True)
class Variant:
    name: str
    environment: dict[str, str] = field(default_factory=dict)


def parse_variant(text: str) -> Variant:
    """``name`` or ``name:VAR=value,VAR2=value2``."""
    name, _, settings = text.partition(":")
    environment: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in settings.split(","))):
        key, equals, value = item.partition("=")
        if not equals or not key:
            raise ValueError(f"variant {text!r}: expected VAR=value, got {item!r}")
        environment[key] = value
    if not name.strip():
        raise ValueError(f"variant {text!r} has no name")
    return Variant(name.strip(), environment)


@dataclass(frozen=True)
class Window:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    ingress_cpu_ms: float
    all_cpu_ms: float


def measure(
    driver: LoadDriver,
    settings: ServingPathSettings,
    variant: Variant,
    route: str,
    users: int,
    seconds: float,
    work: Path,
) -> Window:
    config, port = gateway_config(settings, work, ingress="haproxy", colocate=True, name="alternating")
    environment = {**os.environ, **variant.environment}
    with GatewayProcess(config, work / "alternating.log", port=port, env=environment) as gateway:
        before = cpu_by_process(gateway.pid)
        records, started = driver.locust(gateway.url, users=users, seconds=seconds, rate_per_user=0, route=route)
        spent = cpu_spent(before, cpu_by_process(gateway.pid))
    stats = stage_stats(records, started, WARMUP_S, seconds)
    answered = max(1, sum(1 for record in records if record["status"] == 200))
    ingress = sum(cpu for name, cpu in spent.items() if INGRESS_PROCESS in name)
    return Window(
        requests_per_s=float(stats["achieved_rps"]),
        p50_ms=float(stats["p50_ms"]),
        p99_ms=float(stats["p99_ms"]),
        ingress_cpu_ms=1000 * ingress / answered,
        all_cpu_ms=1000 * sum(spent.values()) / answered,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--student", required=True)
    parser.add_argument("--dataset", required=True, type=Path, help="JSON Lines with a text field")
    parser.add_argument("--variant", action="append", required=True, type=parse_variant, dest="variants")
    parser.add_argument("--pairs", type=int, default=3, help="rounds; each runs every variant once, in order")
    parser.add_argument("--route", default="student")
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--work", type=Path, default=Path("runs/alternating"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    settings = ServingPathSettings(teacher=args.teacher, student=args.student, threshold=None)
    driver = LoadDriver(LoadTestSettings(args.teacher, args.student, args.dataset, args.work), log=lambda *_: None)
    windows: dict[str, list[Window]] = {variant.name: [] for variant in args.variants}
    try:
        for round_number in range(1, args.pairs + 1):
            for variant in args.variants:
                window = measure(driver, settings, variant, args.route, args.users, args.seconds, args.work)
                windows[variant.name].append(window)
                print(
                    f"round {round_number} {variant.name:<32} {window.requests_per_s:7.0f} req/s  "
                    f"p50 {window.p50_ms:5.1f}  p99 {window.p99_ms:6.1f} ms  CPU per request: ingress "
                    f"{window.ingress_cpu_ms:.3f}, all {window.all_cpu_ms:.3f} ms",
                    flush=True,
                )
    finally:
        driver.close()
    for name, measured in windows.items():
        print(
            f"{name}: req/s {[round(w.requests_per_s) for w in measured]} (median "
            f"{statistics.median(w.requests_per_s for w in measured):.0f}); all-process CPU ms per request "
            f"{[round(w.all_cpu_ms, 3) for w in measured]}"
        )


if __name__ == "__main__":
    main()

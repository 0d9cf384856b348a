"""Where a request's time goes: CPU per request in each process, and what the ingress's event loop does.

    python -m benchmarks.profile_path --teacher T --student S --dataset traffic.jsonl [--output docs/benchmarks]

For each gateway configuration (the ingress and the student's placement), under the same closed loop
of Locust users on ``route: student``: the CPU seconds every process of the gateway used, divided by
the requests answered (``psutil``, so the figure counts threads and children the way ``top`` does),
and a py-spy sample of the ingress replica's event-loop thread, its time split by the code it was in
(inclusive, so nested shares overlap). Writes ``profile.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil

from benchmarks.serving_path import ServingPathSettings, gateway_config
from loadtests.driver import LoadDriver, LoadTestSettings
from loadtests.stats import stage_stats
from serving.process import GatewayProcess

CONFIGURATIONS = {
    "Ray proxy, student deployment (before)": ("proxy", False),
    "Ray's HAProxy, student deployment": ("haproxy", False),
    "Ray's HAProxy, student in the ingress (now)": ("haproxy", True),
}

INGRESS_PROCESS = "ServeReplica:cascade:gateway"
"""How the gateway's ingress replica names its process (Ray's ``ray::ServeReplica:<app>:<deployment>``)."""

PY_SPY_RAW = ("--nonblocking", "--threads", "-f", "raw", "-o")

# Frames (function name, then file) that mark where the event loop is; inclusive shares.
CATEGORIES = {
    # Its protocol callbacks and send, not run_asgi: with Ray told not to watch for hang-ups
    # (serving.front_proxy.DISCONNECT_WATCH_OFF), run_asgi awaits the app itself and encloses everything.
    "HTTP server (uvicorn: parse, send)": ("HttpToolsProtocol.", "RequestResponseCycle.send"),
    "Ray's request wrapper (direct ingress, request id, metrics)": ("Replica._direct_ingress_asgi",),
    "FastAPI and Starlette (routing, middleware, response)": ("FastAPI.__call__",),
    "our handler (GatewayIngress.classify_answer)": ("GatewayIngress.classify",),
    "  the cascade (Gateway.answer)": ("Gateway.answer",),
    "  waiting for the model (ModelRunner.logits)": ("ModelRunner.logits",),
    "the model's batches on the loop (ModelRunner._run_batch; in a worker thread they are not here)": (
        "ModelRunner._run_batch",
    ),
    "Ray metrics (Metric._record)": ("Metric._record",),
    "a handle call to another replica (router)": ("AsyncioRouter.assign_request", "DeploymentResponse.__await__"),
    "batch queueing (@serve.batch before, serving.coalescing now)": (
        "_BatchQueue._process_batches",
        "batch_wrapper",
        "Coalescer._next_call",
    ),
}


def _process_name(process: psutil.Process) -> str:
    try:
        name = " ".join(process.cmdline()[:1]) or process.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "gone"
    if name.startswith("ray::"):
        return name.split(".")[0]
    return Path(name.split()[0]).name


def cpu_by_process(root: int) -> dict[int, tuple[str, float]]:
    """CPU seconds so far of ``root`` and each of its descendants, by pid, with a readable name."""
    out: dict[int, tuple[str, float]] = {}
    parent = psutil.Process(root)
    for process in [parent, *parent.children(recursive=True)]:
        try:
            times = process.cpu_times()
            out[process.pid] = (_process_name(process), times.user + times.system)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def cpu_spent(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds each process name used between two ``cpu_by_process`` readings (new processes count whole)."""
    spent: dict[str, float] = {}
    for pid, (name, cpu) in after.items():
        spent[name] = spent.get(name, 0.0) + cpu - before.get(pid, (name, 0.0))[1]
    return spent


def _ingress_pid(root: int) -> int | None:
    for process in psutil.Process(root).children(recursive=True):
        try:
            if INGRESS_PROCESS in " ".join(process.cmdline()):
                return process.pid
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


def _loop_shares(raw: Path) -> dict[str, float]:
    """Inclusive share of the ingress's event-loop samples per category (py-spy's raw, per thread)."""
    counts: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(encoding="utf-8").splitlines():
        stack, _, number = line.rpartition(" ")
        if "AsyncIO Thread" not in stack and "MainThread" not in stack:
            continue
        if "Thread._bootstrap" in stack and "AsyncIO Thread" not in stack:
            continue
        samples = int(number)
        total += samples
        for category, markers in CATEGORIES.items():
            if any(marker in stack for marker in markers):
                counts[category] += samples
    return {category: counts[category] / total if total else 0.0 for category in CATEGORIES}


def profile(
    settings: ServingPathSettings, dataset: Path, users: int, seconds: float, log: Any = print
) -> dict[str, Any]:
    driver = LoadDriver(LoadTestSettings(settings.teacher, settings.student, dataset, Path(".")), log)
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent))
    results: dict[str, Any] = {}
    try:
        for index, (name, (ingress, colocate)) in enumerate(CONFIGURATIONS.items()):
            config, port = gateway_config(
                settings, driver.work, ingress=ingress, colocate=colocate, name=f"profile-{index}"
            )
            with GatewayProcess(config, driver.work / "gateway.log", port=port) as gateway:
                driver.locust(gateway.url, users=users, seconds=5, rate_per_user=0, route="student")  # warm-up
                # First a clean window (no profiler attached): CPU per process and throughput.
                before = cpu_by_process(gateway.pid)
                started_wall = time.time()
                records, started = driver.locust(
                    gateway.url, users=users, seconds=seconds, rate_per_user=0, route="student"
                )
                after = cpu_by_process(gateway.pid)
                # Then a second window with py-spy sampling the ingress without pausing it.
                raw = driver.work / "spy.txt"
                ingress_pid = _ingress_pid(gateway.pid)
                if py_spy and ingress_pid:
                    spy = subprocess.Popen(
                        [py_spy, "record", "-p", str(ingress_pid), "-d", "10", "-r", "100", *PY_SPY_RAW, str(raw)],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                    driver.locust(gateway.url, users=users, seconds=12, rate_per_user=0, route="student")
                    spy.wait(timeout=60)
                answered = sum(1 for r in records if r["status"] == 200)
                stats = stage_stats(records, started, 0.0, seconds)
                per_process = cpu_spent(before, after)
                results[name] = {
                    "requests": answered,
                    "requests_per_s": stats["achieved_rps"],
                    "p50_ms": stats["p50_ms"],
                    "p99_ms": stats["p99_ms"],
                    "wall_s": time.time() - started_wall,
                    "cpu_ms_per_request": {
                        process_name: 1000 * cpu / max(1, answered)
                        for process_name, cpu in sorted(per_process.items(), key=lambda item: -item[1])
                        if cpu > 0.01
                    },
                    "ingress_loop_shares": _loop_shares(raw) if raw.exists() else {},
                }
                log(f"{name}: {stats['achieved_rps']:.0f} req/s, cpu ms/request {results[name]['cpu_ms_per_request']}")
    finally:
        driver.close()
        shutil.rmtree(driver.work, ignore_errors=True)
    return results


def write(results: dict[str, Any], users: int, seconds: float, command: str, output: Path) -> Path:
    output.mkdir(parents=True, exist_ok=True)
    (output / "profile.json").write_text(
        json.dumps({"command": command, "users": users, "seconds": seconds, "results": results}, indent=2) + "\n",
        encoding="utf-8",
    )
    names = list(results)
    processes = sorted({p for r in results.values() for p in r["cpu_ms_per_request"]})
    head = "| process | " + " | ".join(names) + " |\n| --- |" + " --- |" * len(names)
    rows = [
        f"| {p} | " + " | ".join(f"{results[n]['cpu_ms_per_request'].get(p, 0.0):.3f}" for n in names) + " |"
        for p in processes
    ]
    totals = "| **all** | " + " | ".join(f"**{sum(results[n]['cpu_ms_per_request'].values()):.3f}**" for n in names)
    speed = "| req/s (p50 / p99 ms) | " + " | ".join(
        f"{results[n]['requests_per_s']:.0f} ({results[n]['p50_ms']:.0f} / {results[n]['p99_ms']:.0f})" for n in names
    )
    loop = [
        f"| {category} | "
        + " | ".join(f"{100 * results[n]['ingress_loop_shares'].get(category, 0):.0f}%" for n in names)
        + " |"
        for category in CATEGORIES
    ]
    text = f"""# Profile: where a request's time goes

Command: `{command}`. {users} closed-loop Locust users on `route: student`, one text per request,
{seconds:g} s per configuration, everything on this machine's cores.

## CPU milliseconds per answered request, per process

{head}
{speed} |
{chr(10).join(rows)}
{totals} |

## The ingress replica's event loop (py-spy, inclusive share of its samples)

{head.replace("process", "in")}
{chr(10).join(loop)}
"""
    path = output / "profile.md"
    path.write_text(text, encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--student", required=True)
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks"))
    args = parser.parse_args()
    settings = ServingPathSettings(teacher=args.teacher, student=args.student)
    results = profile(settings, args.dataset, args.users, args.seconds)
    command = "python -m benchmarks.profile_path " + " ".join(sys.argv[1:])
    print(write(results, args.users, args.seconds, command, args.output).read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()

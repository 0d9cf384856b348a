"""``cascade chaos``: real faults under constant load, phase by phase, with what clients saw in each.

    cascade chaos --output docs/benchmarks      # the demo pair, on the demo's dev texts

Starts ``cascade serve`` (the embedded demo pair unless ``--config``), then two Locust processes for
the whole run at a constant offered rate: ``route: auto`` (the calibrated cascade escalates a known
share to the teacher) and ``route: student``; and a prober on ``/healthz`` every 100 ms. Phases, in
order, each a window of requests judged on their send time:

| phase | what is done to the gateway |
| --- | --- |
| baseline | nothing |
| teacher_kill | SIGKILL a teacher replica (Ray starts a new one) |
| teacher_hang | SIGSTOP a teacher replica for ``hang_s``, then SIGCONT |
| student_kill | SIGKILL a student replica |
| stalled_connections | ``stalled`` connections that send headers and never finish the body, re-opened as they are cut |
| poison | a stream of hostile requests (lone surrogates, control characters, 1 MB bodies, deep JSON) |
| overload | a third Locust at (``overload_factor`` - 1) x the base rate: ``overload_factor`` x the load |

Per phase: success rate and latency per route, the degraded share, ``/healthz`` p99, and for the
kills the time until the killed role answered again. The faults themselves are in ``benchmarks.faults``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from benchmarks.faults import Poison, Prober, Stalled, replica_pids
from loadtests.driver import LOCUSTFILE
from loadtests.report import package_versions
from loadtests.stats import percentile
from serving import constants as c
from serving.ports import free_local_port
from serving.process import GatewayProcess

PHASES = ("baseline", "teacher_kill", "teacher_hang", "student_kill", "stalled_connections", "poison", "overload")
TARGETS = {
    "auto_success_through_teacher_faults": 0.999,
    "escalated_latency_over_teacher_timeout_s": 0.5,
    "student_p99_ratio_during_teacher_faults": 1.5,
    "valid_failed_by_poison": 0,
    "success_with_stalled_connections": 0.99,
    "healthz_p99_ms": 100.0,
    "recovery_s": 10.0,
}
"""Issue 14's targets; the overload target is ``latency_target_s`` (``--latency-target-s``)."""


@dataclass(frozen=True)
class ChaosSettings:
    dataset: Path
    output: Path
    work: Path
    config: Path | None = None
    auto_rate: float = 30.0
    student_rate: float = 15.0
    users: int = 16
    phase_s: float = 30.0
    hang_s: float = 20.0
    stalled: int = 1000
    overload_factor: float = 3.0
    replicas: int = 1
    """Replicas per model role when the demo pair is served (``config`` unset)."""
    latency_target_s: float = 1.0
    """The p99 that answered requests must keep under overload (the front proxy's defaults are sized for it)."""


@dataclass
class Window:
    name: str
    start: float
    end: float = 0.0
    fault_at: float | None = None
    notes: dict[str, Any] = field(default_factory=dict)


def _locust(url: str, dataset: Path, route: str, rate: float, users: int, seconds: float, results: Path) -> Any:
    locust = shutil.which("locust", path=str(Path(sys.executable).parent)) or "locust"
    env = {
        **os.environ,
        "CASCADE_DATASET": str(dataset),
        "CASCADE_ROUTE": route,
        "CASCADE_RATE_PER_USER": str(rate / users),
        "CASCADE_RESULTS": str(results),
    }
    env.pop("CASCADE_SCENARIO", None)
    command = [locust, "-f", str(LOCUSTFILE), "--headless", "--host", url, "-u", str(users), "-r", str(users)]
    command += ["-t", f"{math.ceil(seconds)}s", "--only-summary", "--loglevel", "ERROR", "--stop-timeout", "10"]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _route_stats(records: list[dict[str, Any]]) -> dict[str, Any]:
    if not records:
        return {"requests": 0}
    ok = [r for r in records if r["status"] == 200]
    texts = sum(len(r.get("degraded", [])) for r in ok)
    degraded = sum(1 for r in ok for reason in r.get("degraded", []) if reason)
    latencies = [r["ms"] for r in records]
    return {
        "answered_p99_ms": percentile([r["ms"] for r in ok], 99) if ok else None,
        "shed_503_share": sum(1 for r in records if r["status"] == 503) / len(records),
        "requests": len(records),
        "success_rate": len(ok) / len(records),
        "statuses": {
            str(s): sum(1 for r in records if r["status"] == s) for s in sorted({r["status"] for r in records})
        },
        "degraded_share": degraded / texts if texts else 0.0,
        "degraded_reasons": sorted({reason for r in ok for reason in r.get("degraded", []) if reason}),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies),
    }


def _recovery_s(records: list[dict[str, Any]], fault_at: float, served: str) -> float | None:
    """Seconds from the fault to the first request after it that ``served`` answered, not degraded."""
    times = [
        r["t"]
        for r in records
        if r["t"] > fault_at
        and r["status"] == 200
        and served in r.get("served_by", [])
        and not any(r.get("degraded", []))
    ]
    return min(times) - fault_at if times else None


def _demo_config(path: Path, replicas: int) -> Path:
    """The embedded demo pair, ``replicas`` replicas per role, every other setting the default.

    Each replica reserves 1/``replicas`` of a CPU, so that the roles fit the node as one replica each does.
    """
    from serving.cli.serve import demo_config

    config = demo_config()
    roles = {
        role: getattr(config, role).model_copy(
            update={
                "deployment": getattr(config, role).deployment.model_copy(
                    update={"num_replicas": replicas, "num_cpus": 1.0 / replicas}
                )
            }
        )
        for role in ("student", "teacher")
    }
    data = config.model_copy(update=roles).model_dump(mode="json", exclude_defaults=True)
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def run_chaos(settings: ChaosSettings, log: Any = print) -> dict[str, Any]:
    s = settings
    s.work.mkdir(parents=True, exist_ok=True)
    port = free_local_port()
    config = s.config or _demo_config(s.work / "gateway.yaml", s.replicas)
    gateway = GatewayProcess(config, s.work / "serve.log", port=port, stop_timeout_s=120)
    url = gateway.url
    windows: list[Window] = []
    total_s = (s.phase_s * 6) + s.hang_s + 10 + 30
    results = {name: s.work / f"locust-{name}.jsonl" for name in ("auto", "student", "overload")}
    for path in results.values():
        path.unlink(missing_ok=True)
    prober = Prober(url)
    loads = [
        _locust(url, s.dataset, "auto", s.auto_rate, s.users, total_s, results["auto"]),
        _locust(url, s.dataset, "student", s.student_rate, max(2, s.users // 2), total_s, results["student"]),
    ]
    prober.start()
    poison_statuses: dict[int, int] = {}
    stalled_opened = 0
    try:
        time.sleep(10)  # Locust users start and the rate settles; not judged
        for name in PHASES:
            window = Window(name, time.time())
            windows.append(window)
            log(f"phase {name}")
            if name in ("teacher_kill", "student_kill"):
                role = name.split("_")[0]
                pids = replica_pids(role)[:1]  # one replica: with more, the others keep serving
                window.notes["killed"] = pids
                window.fault_at = time.time()
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)
                time.sleep(s.phase_s)
            elif name == "teacher_hang":
                pids = replica_pids("teacher")[:1]
                window.notes["stopped"] = pids
                stopped_at = time.time()
                for pid in pids:
                    os.kill(pid, signal.SIGSTOP)
                time.sleep(s.hang_s)
                for pid in pids:
                    os.kill(pid, signal.SIGCONT)
                window.fault_at = time.time()  # recovery counts from the resume: the hang itself is the fault
                window.notes["stopped_for_s"] = window.fault_at - stopped_at
                time.sleep(10)
            elif name == "stalled_connections":
                stalled = Stalled("127.0.0.1", port, s.stalled)
                stalled.start()
                time.sleep(s.phase_s)
                stalled.stop.set()
                stalled.join(timeout=30)
                stalled_opened = stalled.opened
                window.notes.update(opened=stalled.opened, refused=stalled.refused)
            elif name == "poison":
                poison = Poison(url)
                poison.start()
                time.sleep(s.phase_s)
                poison.stop.set()
                poison.join(timeout=60)
                poison_statuses = dict(poison.statuses)
                window.notes["poison_statuses"] = {str(k): v for k, v in sorted(poison_statuses.items())}
            elif name == "overload":
                extra_rate = (s.overload_factor - 1) * (s.auto_rate + s.student_rate)
                # enough users that the offered rate holds even when each waits 2 s for its answer
                users = max(1, math.ceil(extra_rate * 2))
                loads.append(_locust(url, s.dataset, "auto", extra_rate, users, s.phase_s, results["overload"]))
                time.sleep(s.phase_s)
            else:
                time.sleep(s.phase_s)
            window.end = time.time()
        for load in loads:
            load.send_signal(signal.SIGINT)  # Locust writes its records on the way out
        for load in loads:
            load.wait(timeout=120)
    finally:
        prober.stop.set()
        for load in loads:
            if load.poll() is None:
                load.kill()
        gateway.stop()
    records = {name: _records(path) for name, path in results.items()}
    phases: dict[str, Any] = {}
    for window in windows:

        def inside(rows: list[dict[str, Any]], w: Window = window) -> list[dict[str, Any]]:
            return [r for r in rows if w.start <= r["t"] < w.end]

        health = [(ms, status) for t, ms, status in prober.samples if window.start <= t < window.end]
        phase: dict[str, Any] = {
            "seconds": window.end - window.start,
            "auto": _route_stats(inside(records["auto"])),
            "student": _route_stats(inside(records["student"])),
            "healthz": {
                "probes": len(health),
                "success_rate": sum(1 for _, st in health if st == 200) / len(health) if health else None,
                "p99_ms": percentile([ms for ms, _ in health], 99) if health else None,
            },
            **window.notes,
        }
        if window.name == "overload":
            phase["overload_auto"] = _route_stats(inside(records["overload"]))
        if window.fault_at is not None:
            role = "student" if window.name == "student_kill" else "teacher"
            source = records["student"] if role == "student" else records["auto"]
            phase["recovery_s"] = _recovery_s(source, window.fault_at, role)
        phases[window.name] = phase
    return {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(s).items()},
        "teacher_timeout_s": c.DEFAULT_TEACHER_TIMEOUT_S,
        "phases": phases,
        "verdicts": verdicts(phases, c.DEFAULT_TEACHER_TIMEOUT_S, s.latency_target_s),
        "stalled_opened": stalled_opened,
        "poison_statuses": {str(k): v for k, v in sorted(poison_statuses.items())},
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "packages": package_versions()},
    }


def verdicts(phases: dict[str, Any], teacher_timeout_s: float, latency_target_s: float) -> dict[str, dict[str, Any]]:
    """Each target of issue 14 against what the phases measured: the figure, the target, met or not."""
    faults = [phases[name] for name in ("teacher_kill", "teacher_hang") if name in phases]
    base_p99 = phases["baseline"]["student"].get("p99_ms")
    out: dict[str, dict[str, Any]] = {}

    def verdict(key: str, value: float | None, target: float, higher_is_better: bool) -> None:
        met = value is not None and (value >= target if higher_is_better else value <= target)
        out[key] = {"value": value, "target": target, "met": met}

    verdict(
        "auto_success_through_teacher_faults",
        min(p["auto"].get("success_rate", 0.0) for p in faults) if faults else None,
        TARGETS["auto_success_through_teacher_faults"],
        True,
    )
    hang = phases.get("teacher_hang", {}).get("auto", {})
    verdict(
        "escalated_latency_over_teacher_timeout_s",
        (hang["max_ms"] / 1000 - teacher_timeout_s) if hang.get("requests") else None,
        TARGETS["escalated_latency_over_teacher_timeout_s"],
        False,
    )
    ratios = [p["student"]["p99_ms"] / base_p99 for p in faults if p["student"].get("requests") and base_p99]
    verdict(
        "student_p99_ratio_during_teacher_faults",
        max(ratios) if ratios else None,
        TARGETS["student_p99_ratio_during_teacher_faults"],
        False,
    )
    poison = phases.get("poison", {})
    failed = sum(
        p.get("requests", 0) - round(p.get("success_rate", 0.0) * p.get("requests", 0))
        for p in (poison.get("auto", {}), poison.get("student", {}))
    )
    verdict("valid_failed_by_poison", failed if poison else None, TARGETS["valid_failed_by_poison"], False)
    stalled = phases.get("stalled_connections", {})
    rates = [stalled[r]["success_rate"] for r in ("auto", "student") if stalled.get(r, {}).get("requests")]
    verdict("success_with_stalled_connections", min(rates) if rates else None, 0.99, True)
    overload = phases.get("overload", {})
    answered = [
        stats["answered_p99_ms"]
        for stats in (overload.get("auto", {}), overload.get("student", {}), overload.get("overload_auto", {}))
        if stats.get("answered_p99_ms") is not None
    ]
    verdict("overload_answered_p99_s", max(answered) / 1000 if answered else None, latency_target_s, False)
    p99s = [p["healthz"]["p99_ms"] for p in phases.values() if p["healthz"].get("p99_ms") is not None]
    verdict("healthz_p99_ms", max(p99s) if p99s else None, TARGETS["healthz_p99_ms"], False)
    recoveries = [p.get("recovery_s") for p in phases.values() if "recovery_s" in p]
    verdict(
        "recovery_s",
        None if not recoveries or None in recoveries else max(r for r in recoveries if r is not None),
        TARGETS["recovery_s"],
        False,
    )
    return out


def write_chaos_report(result: dict[str, Any], output: Path, command: str) -> tuple[Path, Path]:
    output.mkdir(parents=True, exist_ok=True)
    result = {**result, "command": command}
    stem = (
        "chaos"
        if result["settings"].get("replicas", 1) == 1 or result["settings"].get("config")
        else (f"chaos-replicas-{result['settings']['replicas']}")
    )
    json_path = output / f"{stem}.json"
    json_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    lines = [
        "# Chaos: real faults under constant load",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {result['machine']['cpus']} CPUs. Settings: {json.dumps(result['settings'])}.",
        "",
        "| phase | auto: ok | auto: degraded | auto p50 / p99 ms | student: ok | student p50 / p99 ms "
        "| /healthz p99 ms | 503 share | recovery s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, p in result["phases"].items():
        a, st = p["auto"], p["student"]
        recovery = p.get("recovery_s")
        all_routes = [x for x in (a, st, p.get("overload_auto", {})) if x.get("requests")]
        shed = sum(x["shed_503_share"] * x["requests"] for x in all_routes) / max(
            1, sum(x["requests"] for x in all_routes)
        )
        lines.append(
            f"| {name} | {_pct(a.get('success_rate'))} of {a.get('requests', 0)} | {_pct(a.get('degraded_share'))} "
            f"| {_ms(a.get('p50_ms'))} / {_ms(a.get('p99_ms'))} | {_pct(st.get('success_rate'))} of "
            f"{st.get('requests', 0)} | {_ms(st.get('p50_ms'))} / {_ms(st.get('p99_ms'))} "
            f"| {_ms(p['healthz'].get('p99_ms'))} | {_pct(shed)} | {'-' if recovery is None else f'{recovery:.1f}'} |"
        )
    lines += ["", "| target | measured | target | met |", "| --- | --- | --- | --- |"]
    for key, v in result["verdicts"].items():
        value = v["value"]
        shown = "n/a" if value is None else (f"{value:.4f}" if isinstance(value, float) else str(value))
        lines.append(f"| {key} | {shown} | {v['target']} | {'yes' if v['met'] else '**no**'} |")
    lines += ["", "Degraded reasons per phase and status counts are in `chaos.json`."]
    md_path = output / f"{stem}.md"
    md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return json_path, md_path


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


__all__ = ["ChaosSettings", "replica_pids", "run_chaos", "verdicts", "write_chaos_report"]

"""The load test's outputs: JSON (everything), CSV (every stage), PNG (latency against offered load), Markdown."""

from __future__ import annotations

import json
import math
import platform
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from loadtests.stats import Stage


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("ray", "locust", "torch", "onnxruntime", "transformers"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def write_outputs(result: dict[str, Any], stages: list[Stage], output: Path) -> list[Path]:
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output.mkdir(parents=True, exist_ok=True)
    json_path, csv_path, png_path = (output / f"loadtest-ramp.{ext}" for ext in ("json", "csv", "png"))
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
    text = f"""# Load test (ramp): teacher only vs student only vs the cascade

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

Every stage is in `loadtest-ramp.csv`; the figure is `loadtest-ramp.png`.
"""
    path = output / "loadtest-ramp.md"
    path.write_text(text, encoding="utf-8")
    return path


_TARGET_NAMES = {
    "student_vs_plain": "`route: student` sustained throughput / the plain server's",
    "auto_vs_plain": "`route: auto` sustained throughput / the plain server's",
    "cascade_vs_teacher": "cascade (`auto`) / teacher-only sustained throughput",
    "wide_student_vs_plain": "`gateway_wide`: `route: student` sustained throughput / the plain server's",
    "wide_auto_vs_plain": "`gateway_wide`: `route: auto` sustained throughput / the plain server's",
    "single_request_p50_gap_ms": "single request p50: `route: student` − plain server (ms)",
    "teacher_vs_offline_batch_32": "teacher-only, best texts/s at 32 texts/request / its offline batch-32 texts/s",
}


def _auto_bound_text(result: dict[str, Any]) -> str:
    """What the teacher allows ``route: auto`` on this machine (``benchmarks.serving_path.auto_teacher_bound``)."""
    bound = result.get("auto_teacher_bound")
    if bound is None:
        return ""
    measured = result["targets"].get("auto_vs_plain", {}).get("measured")
    return f"""What the teacher allows `route: auto` here, whatever the serving path does: at its sustained rung it
escalated {100 * bound["escalation_rate"]:.1f}% of texts, and the teacher computes
{result["teacher_offline_texts_per_s"]:.1f} texts/s offline (batch 32), so one-text requests can arrive at
most at **{bound["requests_per_s"]:.0f} req/s** before the escalations alone outrun it, even with a core to
itself: {_fmt(bound["vs_plain"], ".2f")} of the plain server (the gateway sustained {_fmt(measured, ".2f")};
the student's path and Locust share the same cores). The `auto_vs_plain` target would need an escalation
rate of at most {100 * bound["escalation_for_target"]:.1f}% with this teacher, or a teacher
{bound["teacher_speedup_for_target"]:.1f}x as fast (a GPU in production).
"""


def _rung_cell(rung: dict[str, Any] | None, sustained: float) -> str:
    if rung is None:
        return "none within target"
    return f"**{sustained:.0f}** ({rung['users']} users; p50 {rung['p50_ms']:.0f} / p99 {rung['p99_ms']:.0f} ms)"


def _rerun_rule(settings: dict[str, Any]) -> str:
    if not settings.get("min_requests"):
        return ""
    return (
        f"; a rung that counted fewer than {settings['min_requests']} requests ran again, long enough for about "
        f"that many (at most {settings['max_seconds']:g} s)"
    )


def write_side_by_side(result: dict[str, Any], output: Path) -> list[Path]:
    """loadtest.json (everything) and loadtest.md: the gateway beside the plain server and the no-op Ray app."""
    output.mkdir(parents=True, exist_ok=True)
    json_path, md_path = output / "loadtest.json", output / "loadtest.md"
    json_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    settings, machine = result["settings"], result["machine"]
    sizes = [str(size) for size in settings["texts_per_request"]]
    target_rows = "\n".join(
        f"| {_TARGET_NAMES.get(name, name)} | {_fmt(t['measured'], '.2f')} | {t['target']:g} | "
        f"{'yes' if t['met'] else '**no**'} |"
        for name, t in result["targets"].items()
    )
    rows = "\n".join(
        f"| {row['configuration']} | {row['memory_mib']:.0f} | {_fmt(row['single_request_p50_ms'], '.2f')} | "
        + " | ".join(_rung_cell(row["at_sustained"][size], row["sustained_texts_per_s"][size]) for size in sizes)
        + " |"
        for row in result["rows"]
    )
    rungs = "\n".join(
        f"| {row['configuration']} | {r['texts']} | {r['users']} | {r['requests_per_s']:.1f} | "
        f"{r['texts_per_s']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {100 * r['error_rate']:.2f} | "
        f"{100 * r['escalation_rate']:.1f} |"
        for row in result["rows"]
        for r in row["rungs"]
    )
    versions = ", ".join(f"{k} {v}" for k, v in result["versions"].items())
    size_headers = " | ".join(f"{size} text{'s' if size != '1' else ''}/request: texts/s" for size in sizes)
    text = f"""# Load test: the serving path beside a plain server and a no-op Ray Serve app

Command: `{result["command"]}`

Machine: {machine["cpus"]} CPUs ({machine["processor"]}, {machine["platform"]}), {machine["memory_gib"]} GiB;
every server and Locust share all cores (Locust used {machine["core_split"]["load_generator_cores_used"]:.2f} of
a core on average while it ran). Versions: {versions}. Load generator ceiling (Locust against a no-op
asyncio endpoint): **{result["generator_ceiling"]["requests_per_s"]:.0f} req/s**.

Closed loop: each Locust user sends its next request when the last is answered; rungs of
{", ".join(map(str, settings["users"]))} users, {settings["seconds"]:g} s each (the first
{settings["warmup_seconds"]:g} s not counted){_rerun_rule(settings)}. **Sustained** = the best texts/s among
the rungs whose p99 stayed ≤ {settings["p99_target_ms"]:g} ms with ≤ 1% errors. One server runs at a time;
memory is the PSS of all its processes after its runs. Teacher `{settings["teacher"]}`, student
`{settings["student"]}`, traffic `{settings["dataset"]}`; model threads {settings["model_threads"]},
batches up to 32 (no batch wait).

Configurations: `plain` = benchmarks/plain_server.py (one uvicorn process, the same student artifact
and backend, the same answer field for field, no Ray); `noop_ray` = benchmarks/noop_ray_app.py (Ray
Serve answering a fixed body through the gateway's HTTP ingress, one replica); `gateway:<route>` =
`cascade serve` as configured now (Ray's HAProxy straight to the ingress replica, the student inside
it); `gateway_wide:<route>` = the same with {settings["wide_ingress_replicas"]} ingress replicas,
each with the student inside; `gateway_before:student` = the same gateway
with Ray Serve's Python proxy and the student in its own deployment (the configuration before).
The teacher's offline throughput (this process, batch 32, same threads, the texts in the order the load sends them):
**{result["teacher_offline_texts_per_s"]:.1f} texts/s**.

## Targets

| target | measured | wanted | met |
| --- | --- | --- | --- |
{target_rows}

{_auto_bound_text(result)}
## Sustained throughput, memory and single-request latency

| configuration | memory (MiB, PSS) | single request p50 (ms) | {size_headers} |
| --- | --- | --- | {" | ".join("---" for _ in sizes)} |
{rows}

## Every rung

| configuration | texts/request | users | req/s | texts/s | p50 ms | p99 ms | errors % | escalated % |
| --- | --- | --- | --- | --- | --- | --- | --- | --- |
{rungs}
"""
    md_path.write_text(text, encoding="utf-8")
    return [json_path, md_path]

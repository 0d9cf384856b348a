"""A few hundred requests to a live gateway, then its metrics checked by hand against what was sent.

    python -m benchmarks.observability_check --requests 400 --output docs/benchmarks

Starts `cascade serve` on the embedded demo pair with shadow sampling on, sends the demo dev texts
(varied so that every request is distinct) on loopback, scrapes the gateway's metrics endpoint (Ray's
metrics agent), and writes observability.{json,md}: client-side counts next to the exported counters,
and cost, savings and agreement recomputed from the exported parts. Both roles run on this machine's
CPU, so both are priced at the same CPU $/hour. Talks only HTTP to the gateway.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from router.cost import DEFAULT_CPU_NODE_DOLLARS_PER_HOUR
from serving.ports import free_local_port
from serving.process import GatewayProcess, cascade_command

CPU_DOLLARS_PER_HOUR = DEFAULT_CPU_NODE_DOLLARS_PER_HOUR  # both roles run on this machine's CPU here
# Off-topic texts the demo's six intents do not cover: the student is unsure and escalates.
HARD = [
    "what will the weather be like on mars",
    "recommend me a good pasta recipe",
    "who won the football game yesterday",
    "translate this sentence into french",
    "is my mortgage rate going to change",
    "the app crashes when I open settings",
]
DEV = Path(__file__).resolve().parents[1] / "distill" / "demo_data" / "dev.jsonl"


def _sums(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Sum every ray_cascade_ counter over processes, keyed by (name, our labels)."""
    ours = {"served_by", "reason", "role", "outcome", "status_class"}
    totals: dict[tuple[str, tuple[tuple[str, str], ...]], float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("ray_cascade_") and sample.name.endswith("_total"):
                labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k in ours))
                totals[(sample.name, labels)] += sample.value
    return dict(totals)


def _get(sums: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    want = tuple(sorted(labels.items()))
    return sum(v for (n, ls), v in sums.items() if n == f"ray_cascade_{name}" and all(x in ls for x in want))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--shadow-rate", type=float, default=0.25)
    parser.add_argument(
        "--threshold", type=float, default=0.95, help="τ (the demo's calibrated τ is 0: it never escalates)"
    )
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks"))
    args = parser.parse_args()

    paths = dict(
        line.split(": ", 1)
        for line in subprocess.run(
            cascade_command("build-demo"), capture_output=True, text=True, check=True
        ).stdout.splitlines()
    )
    port, metrics_port = free_local_port(), free_local_port()
    config = {
        "http": {"host": "127.0.0.1", "port": port},
        "metrics": {"port": metrics_port},
        "shadow": {"rate": args.shadow_rate, "max_in_flight": 4},
        "cascade": {"threshold": args.threshold},
        "cost": {"student_dollars_per_hour": CPU_DOLLARS_PER_HOUR, "teacher_dollars_per_hour": CPU_DOLLARS_PER_HOUR},
        "drift": {"window": 200, "min_samples": 50},
        "student": {"model": paths["student"]},
        "teacher": {"model": paths["teacher"]},
    }
    workdir = args.output / ".observability"
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "gateway.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    server = GatewayProcess(workdir / "gateway.yaml", workdir / "serve.log", port=port)
    url, metrics_url = server.url, f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        texts = [json.loads(line)["text"] for line in DEV.read_text(encoding="utf-8").splitlines() if line.strip()]
        sent: Counter[str] = Counter()

        def one(i: int) -> Counter[str]:
            mine: Counter[str] = Counter()
            route = "teacher" if i % 20 == 0 else "auto"
            text = HARD[i % len(HARD)] if i % 5 == 1 else texts[i % len(texts)]
            payload = {"inputs": f"{text} (#{i})", "route": route}
            response = httpx.post(f"{url}/v1/classify", json=payload, timeout=60)
            response.raise_for_status()
            for result in response.json()["results"]:
                mine["texts"] += 1
                mine[f"served_by_{result['served_by']}"] += 1
                mine["escalated"] += result["escalated"]
                mine["forced"] += route == "teacher"
            return mine

        started = time.time()
        with ThreadPoolExecutor(8) as pool:
            for part in pool.map(one, range(args.requests)):
                sent.update(part)
        elapsed = time.time() - started
        time.sleep(6)  # Ray reports metrics every 2 s; shadow calls finish after their requests
        sums = _sums(httpx.get(metrics_url, timeout=10).text)
    finally:
        server.stop()

    cost = {role: _get(sums, "cost_dollars_total", role=role) for role in ("student", "teacher", "shadow")}
    baseline = _get(sums, "cost_baseline_dollars_total")
    saved = _get(sums, "cost_saved_dollars_total")
    agree, disagree = (_get(sums, "shadow_total", outcome=o) for o in ("agree", "disagree"))
    dropped = _get(sums, "shadow_total", outcome="dropped")
    exported = {
        "texts": _get(sums, "requests_total"),
        "served_by_student": _get(sums, "requests_total", served_by="student"),
        "served_by_teacher": _get(sums, "requests_total", served_by="teacher"),
        "escalated": _get(sums, "escalations_total", reason="escalation"),
        "forced": _get(sums, "escalations_total", reason="forced"),
        "http_2xx": _get(sums, "http_responses_total", status_class="2xx"),
    }
    client = {key: sent[key] for key in ("texts", "served_by_student", "served_by_teacher", "escalated", "forced")}
    client["http_2xx"] = args.requests
    total_cost = sum(cost.values())
    result: dict[str, Any] = {
        "command": "python -m benchmarks.observability_check "
        f"--requests {args.requests} --shadow-rate {args.shadow_rate} --threshold {args.threshold}",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "requests": args.requests,
        "seconds": round(elapsed, 1),
        "client": client,
        "exported": exported,
        "counts_match": all(client[k] == exported[k] for k in client),
        "cost_dollars": cost,
        "baseline_dollars": baseline,
        "saved_dollars_exported": saved,
        "saved_dollars_by_hand": baseline - total_cost,
        "cost_per_1000_dollars": 1000 * total_cost / exported["texts"],
        "teacher_only_per_1000_dollars": 1000 * baseline / exported["texts"],
        "saved_share": saved / baseline if baseline else None,
        "escalation_rate": exported["escalated"] / (exported["texts"] - exported["forced"]),
        "shadow": {
            "agree": agree,
            "disagree": disagree,
            "dropped": dropped,
            "agreement": agree / max(1, agree + disagree),
        },
        "student_seconds_per_text": cost["student"] * 3600 / CPU_DOLLARS_PER_HOUR / exported["texts"],
        "teacher_seconds_per_text": cost["teacher"]
        * 3600
        / CPU_DOLLARS_PER_HOUR
        / max(1, exported["served_by_teacher"]),
        "priced_at_dollars_per_hour": CPU_DOLLARS_PER_HOUR,
    }
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "observability.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    per_1000 = f"{result['cost_per_1000_dollars']:.3e} / {result['teacher_only_per_1000_dollars']:.3e}"
    compute = f"{1000 * result['student_seconds_per_text']:.2f} / {1000 * result['teacher_seconds_per_text']:.2f}"
    shadow = f"{agree:.0f} / {disagree:.0f} / {dropped:.0f}; {result['shadow']['agreement']:.3f}"
    rows = "\n".join(f"| {k} | {client[k]} | {exported[k]:.0f} |" for k in client)
    md = f"""# Observability: a live gateway's metrics checked against the requests sent

Command: `{result["command"]}` ({result["machine"]["cpus"]} CPUs, {result["machine"]["platform"]}).
The embedded demo pair, `cascade serve` as a subprocess, {args.requests} distinct requests from 8 client
threads on loopback (every 20th forced to the teacher, every 5th off-topic), τ = {args.threshold},
shadow rate {args.shadow_rate}; then one scrape of the metrics endpoint (Ray's metrics agent), every
`ray_cascade_*_total` summed over processes.

| count | client saw | gateway exported |
| --- | --- | --- |
{rows}

Counts match: **{result["counts_match"]}**.

Cost (both roles priced at ${CPU_DOLLARS_PER_HOUR}/h, this machine's CPU):

| figure | value |
| --- | --- |
| cost, student / teacher / shadow ($) | {cost["student"]:.3e} / {cost["teacher"]:.3e} / {cost["shadow"]:.3e} |
| teacher-only baseline ($) | {baseline:.3e} |
| saved, exported ($) | {saved:.3e} |
| saved, by hand: baseline − all cost ($) | {result["saved_dollars_by_hand"]:.3e} |
| cost per 1,000: cascade / teacher only ($) | {per_1000} |
| saved share | {result["saved_share"]:.3f} |
| escalation rate (auto texts) | {result["escalation_rate"]:.3f} |
| measured compute, student / teacher (ms per text) | {compute} |
| shadow: agree / disagree / dropped; agreement | {shadow} |

The exported saving can exceed the hand figure by the carry of not-yet-netted escalation losses
(README, "Observability"); shadow teacher time is counted as cost.
"""
    (args.output / "observability.md").write_text(md, encoding="utf-8")
    print(md)


if __name__ == "__main__":
    main()

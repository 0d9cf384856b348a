"""Time from `cascade serve` to the first answer (cold: building the demo pair; warm: from cache), and
the median latency of one request served by the student and by the teacher.

    python -m benchmarks.startup_latency --output docs/benchmarks/gateway.json

Starts `cascade serve` (the embedded demo pair) as a subprocess on loopback, twice: first with an
empty CASCADE_HOME (cold), then with the cache it left (warm). Sequential single-text requests, so
the latencies are those of one request on an idle gateway, not under load (that is loadtests' job).
Only talks HTTP to the gateway; bounded in requests and time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from serving.ports import free_local_port
from serving.process import ChildProcess, cascade_command

TEXTS = [
    "I lost my card",
    "how much money is in my account",
    "send 40 dollars to my brother",
    "I want a refund for the broken chair",
    "please update my home address",
    "good morning!",
    "can you freeze my debit card",
    "what is left on my checking account",
]


def _start(home: Path, port: int, log: Path) -> tuple[ChildProcess, float]:
    """``cascade serve`` on the demo pair, not waited for: the caller times its first answer."""
    started = time.perf_counter()
    process = ChildProcess(cascade_command("serve", "--port", str(port)), log, env={"CASCADE_HOME": str(home)})
    return process, started


def _first_answer(url: str, process: ChildProcess, deadline_s: float) -> float:
    stop_at = time.perf_counter() + deadline_s
    while time.perf_counter() < stop_at:
        if process.process.poll() is not None:
            raise RuntimeError(f"cascade serve exited with {process.process.returncode}")
        try:
            response = httpx.post(f"{url}/v1/classify", json={"inputs": "hello"}, timeout=5)
            if response.status_code == 200:
                return time.perf_counter()
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"no answer within {deadline_s} s")


def _latencies(url: str, route: str, requests: int) -> dict[str, float]:
    samples = []
    with httpx.Client(timeout=30) as client:
        for i in range(requests + 5):
            started = time.perf_counter()
            response = client.post(f"{url}/v1/classify", json={"inputs": TEXTS[i % len(TEXTS)], "route": route})
            elapsed = time.perf_counter() - started
            response.raise_for_status()
            if i >= 5:  # the first few warm the connection and the replica's caches
                samples.append(elapsed * 1000)
    samples.sort()
    return {
        "requests": requests,
        "median_ms": statistics.median(samples),
        "p90_ms": samples[int(0.9 * (len(samples) - 1))],
        "min_ms": samples[0],
    }


def run_once(home: Path, requests: int, deadline_s: float) -> dict[str, Any]:
    port = free_local_port()
    url = f"http://127.0.0.1:{port}"
    log = home.parent / f"serve-{port}.log"
    process, started = _start(home, port, log)
    try:
        first = _first_answer(url, process, deadline_s) - started
        return {
            "first_answer_s": round(first, 2),
            "student": _latencies(url, "student", requests),
            "teacher": _latencies(url, "teacher", requests),
        }
    finally:
        process.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200, help="sequential requests per route (default 200)")
    parser.add_argument("--deadline", type=float, default=600, help="seconds to wait for the first answer")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        home = Path(scratch) / "cascade-home"
        cold = run_once(home, args.requests, args.deadline)
        warm = run_once(home, args.requests, args.deadline)
    result = {
        "command": "python -m benchmarks.startup_latency " + " ".join(sys.argv[1:]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "cold": cold,
        "warm": warm,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

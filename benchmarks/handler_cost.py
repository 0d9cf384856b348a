"""The gateway's own code per request, outside Ray, beside the plain server's: what is ours, what is the framework's.

    python -m benchmarks.handler_cost --teacher T --student S --dataset traffic.jsonl [--output docs/benchmarks]

``profile_path`` measures whole processes under load; this isolates the code in between. In one
process and one event loop, without HTTP or Ray, it times (CPU seconds of the process, model thread
included, divided by requests) the same one-text ``/v1/classify`` bodies answered by:

- the plain server's handler (``benchmarks.plain_server.answer_body``: parse, one model call, encode);
- the gateway's ``Gateway.answer`` on ``route: student``, the student in this process as ``colocate: true``
  serves it (its batcher, ``serving.coalescing``, batches up to 32), answer encoded as the ingress does; one
  request at a time, and 32 at once (what 32 closed-loop users give it);
- the model alone, one text per call and 32 per call.

What the gateway's ingress replica spends per request under load (``profile.md``) minus the gateway's
code here is what the framework's path (uvicorn, Ray's request wrapper, the event loop's wake-ups)
costs it. Writes ``handler-cost.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from benchmarks.distillation import machine
from benchmarks.plain_server import answer_body
from serving.application import gateway_user_config
from serving.config import parse_config
from serving.gateway import Gateway

CONCURRENCY = 32
BATCH = {"max_batch_size": 32, "batch_wait_timeout_s": 0.0}


class _UnusedTeacher:
    """The teacher's handle: on ``route: student`` only its speed is asked (for the savings metric)."""

    class _Method:
        def __init__(self, answer: Callable[..., Any]) -> None:
            self.remote = answer

    def __init__(self) -> None:
        async def info() -> dict[str, float]:
            return {"seconds_per_text": 0.007}

        async def logits(texts: list[str], deadline: float | None = None) -> tuple[np.ndarray, float]:
            raise AssertionError("route: student never calls the teacher")

        self.info, self.logits = self._Method(info), self._Method(logits)


def _cpu_us_per_request(run: Callable[[], None], requests: int, repeats: int) -> list[float]:
    run()  # warm: batch queue, caches, allocator
    figures = []
    for _ in range(repeats):
        started = time.process_time()
        run()
        figures.append((time.process_time() - started) / requests * 1e6)
    return figures


def measure(teacher: str, student: str, texts: list[str], repeats: int) -> dict[str, Any]:
    role = {"threads": 1, "batching": BATCH}
    config = parse_config(
        {"student": {**role, "model": student, "colocate": True}, "teacher": {**role, "model": teacher}}
    )
    gateway = Gateway(None, _UnusedTeacher(), colocated_student=config.student.model_dump())
    loop = asyncio.new_event_loop()
    loop.run_until_complete(gateway.reconfigure(gateway_user_config(config)))
    runner = gateway._local["student"]  # the colocated student, as the ingress holds it
    bodies = [orjson.dumps({"inputs": text, "route": "student"}) for text in texts]
    labels, versions = runner.ref.labels, {"student": runner.ref.version}

    def plain() -> None:
        for body in bodies:
            answer_body(runner.backend, labels, versions, body)

    async def one_at_a_time() -> None:
        for body in bodies:
            orjson.dumps(await gateway.answer(body, "request-id"))

    async def many_at_once() -> None:
        async def one(body: bytes) -> None:
            orjson.dumps(await gateway.answer(body, "request-id"))

        for start in range(0, len(bodies), CONCURRENCY):
            await asyncio.gather(*(one(body) for body in bodies[start : start + CONCURRENCY]))

    def model(per_call: int) -> Callable[[], None]:
        def run() -> None:
            for start in range(0, len(texts), per_call):
                runner.backend.logits(texts[start : start + per_call])

        return run

    n = len(bodies)
    rows = {
        "plain server's handler, one request at a time": _cpu_us_per_request(plain, n, repeats),
        "gateway (route: student, colocated), one request at a time": _cpu_us_per_request(
            lambda: loop.run_until_complete(one_at_a_time()), n, repeats
        ),
        f"gateway (route: student, colocated), {CONCURRENCY} requests at once": _cpu_us_per_request(
            lambda: loop.run_until_complete(many_at_once()), n, repeats
        ),
        "the model alone, 1 text per call": _cpu_us_per_request(model(1), n, repeats),
        f"the model alone, {CONCURRENCY} texts per call": _cpu_us_per_request(model(CONCURRENCY), n, repeats),
    }
    loop.close()
    return {
        "requests_per_repeat": n,
        "repeats": repeats,
        "cpu_us_per_request": {name: {"median": statistics.median(v), "all": v} for name, v in rows.items()},
    }


def write(result: dict[str, Any], output: Path, command: str) -> None:
    output.mkdir(parents=True, exist_ok=True)
    result = {"command": command, "machine": machine(), **result}
    box = result["machine"]
    (output / "handler-cost.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    lines = [
        "# The gateway's own code per request, beside the plain server's handler",
        "",
        f"Command: `{command}`",
        "",
        "One process, one event loop, no HTTP and no Ray: CPU microseconds per one-text `/v1/classify` body",
        "(the process's CPU time, model thread included), median of "
        f"{result['repeats']} passes over {result['requests_per_repeat']} texts of the traffic file.",
        "Module docstring of `benchmarks/handler_cost.py` for what each row runs.",
        f"Machine: {box['cpus']} CPUs, {box['platform']}, onnxruntime {box['onnxruntime']}.",
        "",
        "| code | CPU µs per request (median) | all passes |",
        "| --- | ---: | --- |",
    ]
    for name, row in result["cpu_us_per_request"].items():
        lines.append(f"| {name} | {row['median']:.0f} | {', '.join(f'{v:.0f}' for v in row['all'])} |")
    median = [row["median"] for row in result["cpu_us_per_request"].values()]
    plain, one, many, model_one, model_many = median
    lines += [
        "",
        f"- The gateway's code at {CONCURRENCY} requests at once costs {many / plain:.2f}× the plain handler;",
        f"  beyond the model's own batched cost, {many - model_many:.0f} µs per request against the plain",
        f"  handler's {plain - model_one:.0f} µs beyond its one-text call.",
        f"- One request at a time it costs {one / plain:.2f}× the plain handler: each request is a batch of",
        "  one (the batcher, with its 0.1 ms wait for company when the model runs on the event loop,",
        "  and metrics), with nothing to share it.",
    ]
    (output / "handler-cost.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--student", required=True)
    parser.add_argument("--dataset", required=True, help="JSON Lines with a text field (the load test's traffic)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks"))
    args = parser.parse_args()
    lines = Path(args.dataset).read_text(encoding="utf-8").splitlines()
    texts = [json.loads(line)["text"] for line in lines if line.strip()]
    result = measure(args.teacher, args.student, texts, args.repeats)
    command = (
        f"python -m benchmarks.handler_cost --teacher {args.teacher} --student {args.student} "
        f"--dataset {args.dataset} --repeats {args.repeats}"
    )
    write(result, args.output, command)
    print((args.output / "handler-cost.md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()

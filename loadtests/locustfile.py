"""Locust load for cascade-gateway: real texts over HTTP, every answer recorded for accuracy and latency.

Run headless by ``cascade loadtest`` (one stage at a time, offered rate fixed) or by hand with a
scenario shape::

    CASCADE_DATASET=../shared/datasets/banking77/dev.jsonl CASCADE_SCENARIO=spike \\
        locust -f loadtests/locustfile.py --headless --host http://127.0.0.1:8000

Settings come from the environment (Locust's own options stay Locust's):

| variable | meaning | default |
| --- | --- | --- |
| ``CASCADE_DATASET`` | JSONL of ``{"text", "label"?}``: the traffic mix | required |
| ``CASCADE_HARD_DATASET`` / ``CASCADE_HARD_SHARE`` | a second JSONL of hard texts, and their share | none / 0 |
| ``CASCADE_ROUTE`` | ``auto`` / ``student`` / ``teacher`` | ``auto`` |
| ``CASCADE_PATH`` | request path (``/direct/student`` for the student deployment itself) | ``/v1/classify`` |
| ``CASCADE_TEXTS_PER_REQUEST`` | texts per request | 1 |
| ``CASCADE_RATE_PER_USER`` | requests per second per user (``constant_throughput``); 0: no wait | 1 |
| ``CASCADE_MAX_REQUESTS`` | stop after this many requests in all | 100000 |
| ``CASCADE_SCENARIO`` | ``steady`` / ``ramp`` / ``spike`` / ``drift`` shape; unset: Locust's -u/-r/-t | unset |
| ``CASCADE_USERS`` / ``CASCADE_DURATION_S`` | the scenario's base users and length | 20 / 60 |
| ``CASCADE_DRIFT_DATASET`` | drift: the second half's mix (default: the dataset's other half of labels) | unset |
| ``CASCADE_RESULTS`` | write one JSON line per request here at the end | unset |

Only HTTP: nothing of the gateway is imported.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any, ClassVar

from locust import FastHttpUser, LoadTestShape, constant, constant_throughput, events, task

from loadtests.scenarios import scenario_stages, send_order

Row = tuple[int, str, str | None]  # (index in its file, text, gold label)


def _read(path: str) -> list[Row]:
    rows: list[Row] = []
    for index, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines()):
        if line.strip():
            item = json.loads(line)
            rows.append((index, item["text"], item.get("label")))
    if not rows:
        raise ValueError(f"{path} holds no texts")
    return rows


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


class Mix:
    """What a user sends next: the dataset, a share of hard texts, and for drift a second mix after a time."""

    def __init__(self) -> None:
        self.main = _read(os.environ["CASCADE_DATASET"])
        hard = os.environ.get("CASCADE_HARD_DATASET")
        self.hard = _read(hard) if hard else []
        self.hard_share = _env_float("CASCADE_HARD_SHARE", 0.0) if self.hard else 0.0
        self.before, self.after = self.main, self.main
        self.drift_at: float | None = None
        if os.environ.get("CASCADE_SCENARIO") == "drift":
            self.drift_at = time.time() + _env_float("CASCADE_DURATION_S", 60) / 2
            drift = os.environ.get("CASCADE_DRIFT_DATASET")
            if drift:
                self.after = _read(drift)
            else:  # the first half of the labels, then the second half
                labels = sorted({gold for _, _, gold in self.main if gold is not None})
                first = set(labels[: len(labels) // 2])
                self.before = [row for row in self.main if row[2] in first]
                self.after = [row for row in self.main if row[2] not in first]

        # The main mix goes through the dataset in one fixed shuffled order, so that every run (and
        # every configuration of `cascade loadtest`) sees the same texts first and covers them all.
        self.order = send_order(len(self.main))
        self.cursor = 0

    def pick(self, rng: random.Random) -> tuple[str, Row]:
        if self.hard and rng.random() < self.hard_share:
            return "hard", rng.choice(self.hard)
        if self.drift_at is not None:
            if time.time() >= self.drift_at:
                return "after", rng.choice(self.after)
            return "before", rng.choice(self.before)
        row = self.main[self.order[self.cursor % len(self.order)]]
        self.cursor += 1
        return "main", row


class _Run:
    """What this Locust process shares among its users."""

    mix: ClassVar[Mix | None] = None
    records: ClassVar[list[dict[str, Any]]] = []
    sent: ClassVar[int] = 0


def _wait_time() -> Any:
    rate = _env_float("CASCADE_RATE_PER_USER", 1.0)
    return constant_throughput(rate) if rate > 0 else constant(0)


class ClassifyUser(FastHttpUser):
    """Sends texts, keeps what came back. FastHttpUser: geventhttpclient, the cheaper Locust client."""

    wait_time = _wait_time()

    def on_start(self) -> None:
        if _Run.mix is None:
            _Run.mix = Mix()
        self.rng = random.Random()
        self.route = os.environ.get("CASCADE_ROUTE", "auto")
        self.path = os.environ.get("CASCADE_PATH", "/v1/classify")
        self.texts_per_request = int(os.environ.get("CASCADE_TEXTS_PER_REQUEST", "1"))
        self.max_requests = int(os.environ.get("CASCADE_MAX_REQUESTS", "100000"))

    @task
    def classify(self) -> None:
        mix = _Run.mix
        assert mix is not None
        if _Run.sent >= self.max_requests:
            self.environment.runner.quit()
            return
        _Run.sent += 1
        picks = [mix.pick(self.rng) for _ in range(self.texts_per_request)]
        body = {"inputs": [row[1] for _, row in picks], "route": self.route}
        started = time.time()
        with self.client.post(self.path, json=body, catch_response=True, name=self.path) as response:
            latency_ms = (time.time() - started) * 1000
            record: dict[str, Any] = {
                "t": started,
                "ms": latency_ms,
                "status": response.status_code,
                "mix": [source for source, _ in picks],
                "index": [row[0] for _, row in picks],
                "gold": [row[2] for _, row in picks],
            }
            if response.status_code == 200:
                results = response.json()["results"]
                record["label"] = [r["label"] for r in results]
                record["served_by"] = [r.get("served_by", "student") for r in results]
                record["escalated"] = [bool(r.get("escalated", False)) for r in results]
                record["degraded"] = [r.get("degraded_reason") for r in results]
                response.success()
            else:
                response.failure(f"HTTP {response.status_code}")
            _Run.records.append(record)


@events.quitting.add_listener
def _write_records(environment: Any, **_: Any) -> None:
    path = os.environ.get("CASCADE_RESULTS")
    if path:
        with open(path, "w", encoding="utf-8") as out:
            for record in _Run.records:
                out.write(json.dumps(record) + "\n")


if os.environ.get("CASCADE_SCENARIO"):

    class ScenarioShape(LoadTestShape):
        """The scenario named by CASCADE_SCENARIO, bounded by CASCADE_DURATION_S."""

        stages = scenario_stages(
            os.environ["CASCADE_SCENARIO"],
            int(os.environ.get("CASCADE_USERS", "20")),
            _env_float("CASCADE_DURATION_S", 60),
        )

        def tick(self) -> tuple[int, float] | None:
            elapsed = self.get_run_time()
            for end, users in self.stages:
                if elapsed < end:
                    return users, float(max(users, 1))
            return None

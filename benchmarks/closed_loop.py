"""The closed loop measured end to end: drift appears, the teacher labels it, a redistill run learns it,
the gateway swaps the new student in under load, and escalation and agreement come back.

The pieces here talk HTTP to a running gateway and read its metrics endpoint (plus the teacher's
answers, computed offline with ``serving``'s backends); they are shared by ``tests/test_closed_loop.py``
(tiny models, the test session's Ray) and ``cascade benchmark-loop`` (``distill/loop_benchmark.py``:
real models on a dataset, ``cascade serve`` and ``cascade redistill`` as separate processes).

What a phase measures, on texts no model was trained on:

- *escalation rate*: share of ``route=auto`` answers the teacher gave;
- *agreement*: the served student's answer (``route=student``) equals the teacher's, the teacher's
  answers computed once, offline, with the same artifact the gateway serves (asking the gateway
  with ``route=teacher`` would log every text as teacher-labelled, and the next student would train
  on the evaluation traffic);
- the drift metrics the gateway exports over the phase: PSI of the student's confidence, shadow
  agreement/disagreement counts.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from loadtests import wait_until_settled
from serving import metrics as m


@dataclass(frozen=True)
class Answer:
    """One text's answer as the client saw it (status 0: the connection failed)."""

    sent_at: float
    status: int
    label: str | None = None
    escalated: bool | None = None
    student_version: str | None = None


def _post(client: httpx.Client, url: str, texts: Sequence[str], route: str) -> list[Answer]:
    sent_at = time.time()
    try:
        response = client.post(f"{url}/v1/classify", json={"inputs": list(texts), "route": route})
    except httpx.HTTPError:
        return [Answer(sent_at, 0) for _ in texts]
    if response.status_code != 200:
        return [Answer(sent_at, response.status_code) for _ in texts]
    body = response.json()
    version = body["model_versions"]["student"]
    return [Answer(sent_at, 200, r["label"], r["escalated"], version) for r in body["results"]]


def classify(
    url: str, texts: Sequence[str], *, route: str = "auto", per_request: int = 1, workers: int = 4
) -> list[Answer]:
    """Every text through the gateway, ``per_request`` texts a request, answers in the texts' order."""
    chunks = [texts[i : i + per_request] for i in range(0, len(texts), per_request)]
    with httpx.Client(timeout=120) as client, ThreadPoolExecutor(workers) as pool:
        parts = list(pool.map(lambda chunk: _post(client, url, chunk, route), chunks))
    return [answer for part in parts for answer in part]


def teacher_labels(teacher: str, texts: Sequence[str], *, max_length: int, threads: int = 1) -> dict[str, str]:
    """The teacher's answer per text, from the artifact the gateway serves (offline, nothing logged)."""
    from distill.predictions import batched_logits
    from serving.backends import load_backend
    from serving.model_ref import resolve_model

    ref = resolve_model(teacher)
    distinct = list(dict.fromkeys(texts))
    logits = batched_logits(load_backend(ref, threads=threads, max_length=max_length), distinct)
    return {text: ref.labels[int(row)] for text, row in zip(distinct, logits.argmax(axis=1), strict=True)}


def drift_metrics(metrics_url: str, application: str | None = None) -> dict[str, float | None]:
    """PSI and shadow counts from one scrape of the gateway's metrics (only ``application``'s series)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(metrics_url, timeout=30).text
    psi: list[float] = []
    shadow = {"agree": 0.0, "disagree": 0.0}
    escalated = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if application is not None and sample.labels.get("application") != application:
                continue
            if sample.name == m.RAY_PREFIX + m.CONFIDENCE_PSI:
                psi.append(sample.value)
            elif sample.name == m.RAY_PREFIX + m.SHADOW and sample.labels.get("outcome") in shadow:
                shadow[sample.labels["outcome"]] += sample.value
            elif sample.name == m.RAY_PREFIX + m.ESCALATIONS:
                escalated += sample.value
    return {
        "psi": max(psi) if psi else None,
        "shadow_agree": shadow["agree"],
        "shadow_disagree": shadow["disagree"],
        "escalations": escalated,
    }


def _share(values: Sequence[bool]) -> float | None:
    return float(np.mean(values)) if values else None


def phase(
    name: str,
    url: str,
    texts: Sequence[str],
    teacher: dict[str, str],
    *,
    workers: int = 4,
    metrics_url: str | None = None,
    application: str | None = None,
    metrics_deadline_s: float = 120.0,
) -> dict[str, Any]:
    """Send ``texts`` through the cascade, then ask the student alone; the phase's figures.

    With ``metrics_url``, the exported drift metrics are read before and after: the PSI at the end
    of the phase and the shadow counts during it. "After" waits, up to ``metrics_deadline_s``, until
    the export has converged (``wait_for_export``).
    """
    before = drift_metrics(metrics_url, application) if metrics_url else None
    started = time.time()
    auto = classify(url, texts, route="auto", workers=workers)
    student = classify(url, texts, route="student", per_request=16, workers=workers)
    answered = [a for a in auto if a.status == 200]
    result: dict[str, Any] = {
        "phase": name,
        "texts": len(texts),
        "seconds": round(time.time() - started, 2),
        "failed": sum(a.status != 200 for a in (*auto, *student)),
        "escalation_rate": _share([bool(a.escalated) for a in answered]),
        "agreement": _share([s.label == teacher[t] for t, s in zip(texts, student, strict=True) if s.status == 200]),
        "student_versions": sorted({a.student_version for a in (*auto, *student) if a.student_version}),
    }
    if metrics_url and before is not None:
        escalated = sum(1 for a in answered if a.escalated)
        after = wait_for_export(metrics_url, application, before, escalated, deadline_s=metrics_deadline_s)
        agree = float(after["shadow_agree"] or 0) - float(before["shadow_agree"] or 0)
        disagree = float(after["shadow_disagree"] or 0) - float(before["shadow_disagree"] or 0)
        result["exported"] = {
            "psi": after["psi"],
            "shadow_compared": agree + disagree,
            "shadow_disagreement": disagree / (agree + disagree) if agree + disagree else None,
        }
    return result


def wait_for_export(
    metrics_url: str,
    application: str | None,
    before: dict[str, float | None],
    escalated: int,
    *,
    deadline_s: float,
    every_s: float = 1.5,
) -> dict[str, float | None]:
    """The drift metrics once the export has caught up, or at the deadline.

    Caught up: every escalation the clients saw is counted, and two scrapes ``every_s`` apart (more
    than one report interval of Ray's processes) agree, so shadow calls that end after their
    requests are in too. A loaded machine delays Ray's reports; this waits for them instead of
    sleeping a fixed time.
    """
    return wait_until_settled(
        lambda: drift_metrics(metrics_url, application),
        lambda now: float(now["escalations"] or 0) - float(before["escalations"] or 0) >= escalated,
        deadline_s=deadline_s,
        every_s=every_s,
    )


@dataclass
class ContinuousLoad:
    """``workers`` clients sending one text a request, back to back, until stopped: what a swap must not disturb."""

    url: str
    texts: Sequence[str]
    workers: int = 2
    answers: list[Answer] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(self.workers)]

    def _run(self, worker: int) -> None:
        with httpx.Client(timeout=120) as client:
            i = worker
            while not self._stop.is_set():
                answers = _post(client, self.url, [self.texts[i % len(self.texts)]], "auto")
                with self._lock:
                    self.answers.extend(answers)
                i += self.workers

    def __enter__(self) -> ContinuousLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)

    def snapshot(self) -> list[Answer]:
        with self._lock:
            return list(self.answers)

    def first_served(self, version: str) -> float | None:
        """When the first request that ``version`` answered was sent."""
        return min((a.sent_at for a in self.snapshot() if a.student_version == version), default=None)

    def wait_for(self, version: str, deadline_s: float) -> float:
        end = time.time() + deadline_s
        while time.time() < end:
            first = self.first_served(version)
            if first is not None:
                return first
            time.sleep(0.2)
        last = self.snapshot()[-3:]
        raise TimeoutError(f"{version} never served within {deadline_s:.0f} s; last answers: {last}")

    def wait_for_requests(self, count: int, deadline_s: float = 60) -> None:
        """Wait until ``count`` more requests have been answered (or failed) from now."""
        target = len(self.snapshot()) + count
        end = time.time() + deadline_s
        while len(self.snapshot()) < target:
            if time.time() > end:
                raise TimeoutError(f"fewer than {count} requests in {deadline_s:.0f} s")
            time.sleep(0.1)

    def summary(self) -> dict[str, Any]:
        answers = self.snapshot()
        statuses = Counter(str(a.status) for a in answers)
        versions = Counter(a.student_version for a in answers if a.student_version)
        seconds = (answers[-1].sent_at - answers[0].sent_at) if len(answers) > 1 else 0.0
        return {
            "requests": len(answers),
            "failed": sum(n for status, n in statuses.items() if status != "200"),
            "statuses": dict(statuses),
            "student_versions": dict(versions),
            "seconds": round(seconds, 1),
            "requests_per_s": round(len(answers) / seconds, 1) if seconds else None,
        }


def wait_for_log(read_rows: Callable[[], int], at_least: int, *, settle_s: float, deadline_s: float = 120) -> int:
    """Wait until the traffic log holds ``at_least`` rows and has stopped growing for ``settle_s``."""
    end = time.time() + deadline_s
    last, since = -1, time.time()
    while time.time() < end:
        rows = read_rows()
        if rows != last:
            last, since = rows, time.time()
        elif rows >= at_least and time.time() - since >= settle_s:
            return rows
        time.sleep(0.2)
    raise TimeoutError(f"the traffic log holds {last} rows, expected at least {at_least}")

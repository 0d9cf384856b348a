"""``cascade report``: cost per request, savings, escalation and agreement over a time window, without Grafana.

Two sources, one computation. Both yield samples of the same summed counters at a series of times:

- Prometheus (``--prometheus URL --window 1h``): ``query_range`` of every series of each counter;
- the gateway's own metrics (``--metrics-url URL --duration 60``): Ray's metrics agent, polled
  every few seconds for the duration.

Each interval's figures are counter deltas taken **per series** (one series per Ray process), then
summed, as PromQL's ``increase`` does: a series that went down restarted from zero (its new value is
its delta), and a series that appears mid-window (a new replica) counted from zero. Summing first
would turn one replica's restart into a drop of the whole total. So the report is exact for what
happened between the first and last sample. Writes a PNG and an HTML
page that embeds it, with the window's totals.
"""

from __future__ import annotations

import base64
import html
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from serving import metrics as m
from serving.errors import CascadeError
from serving.plotting import pyplot

# counter key → (metric name without Ray's prefix, required labels)
COUNTERS: dict[str, tuple[str, dict[str, str]]] = {
    "requests": (m.REQUESTS, {}),
    "escalated": (m.ESCALATIONS, {"reason": "escalation"}),
    "forced": (m.ESCALATIONS, {"reason": "forced"}),
    "cost": (m.COST, {}),
    "baseline": (m.COST_BASELINE, {}),
    "saved": (m.COST_SAVED, {}),
    "agree": (m.SHADOW, {"outcome": "agree"}),
    "disagree": (m.SHADOW, {"outcome": "disagree"}),
}


@dataclass(frozen=True)
class Samples:
    """Counter values at increasing times (seconds since the epoch).

    ``values[key]`` is ``[series, time]`` (a 1-d array is one series), NaN where a series did not
    exist at that time.
    """

    times: np.ndarray
    values: dict[str, np.ndarray]


def interval_deltas(values: np.ndarray) -> np.ndarray:
    """Per-interval increase of a counter, summed over its series, each series' resets handled on its own."""
    grid = np.atleast_2d(np.asarray(values, dtype=np.float64))
    before, after = grid[:, :-1], grid[:, 1:]
    steps = np.where(np.isnan(before) | (after < before), after, after - before)  # new or restarted: from zero
    return np.asarray(np.nansum(steps, axis=0), dtype=np.float64)  # a series gone (NaN after) adds nothing


def _ratio(numerator: np.ndarray | float, denominator: np.ndarray | float) -> Any:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.asarray(denominator) > 0, np.asarray(numerator) / np.asarray(denominator), np.nan)


def summarise(samples: Samples) -> dict[str, Any]:
    """Per-interval series and window totals of the report's four figures."""
    if len(samples.times) < 2:
        raise CascadeError("a report needs at least two samples in the window")
    d = {key: interval_deltas(values) for key, values in samples.values.items()}
    judged = d["requests"] - d["forced"]
    series = {
        "time": samples.times[1:],
        "requests_per_s": d["requests"] / np.diff(samples.times),
        "cost_per_request": _ratio(d["cost"], d["requests"]),
        "baseline_per_request": _ratio(d["baseline"], d["requests"]),
        "saved_share": _ratio(d["saved"], d["baseline"]),
        "escalation_rate": _ratio(d["escalated"], judged),
        "agreement": _ratio(d["agree"], d["agree"] + d["disagree"]),
    }
    total = {key: float(values.sum()) for key, values in d.items()}
    totals = {
        "window_s": float(samples.times[-1] - samples.times[0]),
        "requests": total["requests"],
        "cost_dollars": total["cost"],
        "cost_per_1000_dollars": float(_ratio(1000 * total["cost"], total["requests"])),
        "teacher_only_per_1000_dollars": float(_ratio(1000 * total["baseline"], total["requests"])),
        "saved_dollars": total["saved"],
        "saved_share": float(_ratio(total["saved"], total["baseline"])),
        "escalation_rate": float(_ratio(total["escalated"], total["requests"] - total["forced"])),
        "shadow_compared": total["agree"] + total["disagree"],
        "agreement": float(_ratio(total["agree"], total["agree"] + total["disagree"])),
    }
    return {"series": series, "totals": totals}


def _selector(key: str) -> str:
    name, labels = COUNTERS[key]
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return f"{m.RAY_PREFIX}{name}{{{inner}}}" if inner else f"{m.RAY_PREFIX}{name}"


def from_prometheus(url: str, window_s: float, step_s: float, end: float | None = None) -> Samples:
    """Sample every series of each counter from Prometheus's ``query_range`` API over the window."""
    end = float(int(end or time.time()))  # whole seconds: Prometheus answers at start + k·step, in ms
    start = end - window_s
    times = np.arange(start, end + step_s / 2, step_s)
    values: dict[str, np.ndarray] = {}
    with httpx.Client(base_url=url, timeout=30) as client:
        for key in COUNTERS:
            query = _selector(key)
            response = client.get(
                "/api/v1/query_range", params={"query": query, "start": start, "end": end, "step": step_s}
            )
            if response.status_code != 200:
                raise CascadeError(f"Prometheus answered {response.status_code} to {query}: {response.text[:200]}")
            rows = []
            for series in response.json()["data"]["result"]:
                by_time = {float(t): float(v) for t, v in series["values"]}
                rows.append([by_time.get(float(t), np.nan) for t in times])
            values[key] = np.array(rows) if rows else np.full((1, len(times)), np.nan)
    known = ~np.all(np.isnan(values["requests"]), axis=0)
    if known.sum() < 2:
        raise CascadeError(f"Prometheus at {url} has no cascade metrics in the last {window_s:.0f} s")
    return Samples(times[known], {key: v[:, known] for key, v in values.items()})


SeriesKey = tuple[tuple[str, str], ...]


def parse_series(text: str) -> dict[str, dict[SeriesKey, float]]:
    """Each report counter's series (by their full label set) in one scrape of Prometheus text format."""
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[str, dict[SeriesKey, float]] = {key: {} for key in COUNTERS}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for key, (name, labels) in COUNTERS.items():
                if sample.name == m.RAY_PREFIX + name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    found[key][tuple(sorted(sample.labels.items()))] = sample.value
    return found


def parse_counters(text: str) -> dict[str, float]:
    """Sum each report counter over every series in one scrape of Prometheus text format."""
    return {key: float(sum(series.values())) for key, series in parse_series(text).items()}


def from_metrics_endpoint(
    url: str, duration_s: float, every_s: float, sleep: Callable[[float], None] = time.sleep
) -> Samples:
    """Poll the gateway's metrics endpoint (Ray's metrics agent) for ``duration_s``."""
    times: list[float] = []
    scrapes: list[dict[str, dict[SeriesKey, float]]] = []
    deadline = time.time() + duration_s
    with httpx.Client(timeout=30) as client:
        while True:
            try:
                response = client.get(url)
                response.raise_for_status()
            except httpx.HTTPError as error:
                raise CascadeError(f"cannot read metrics from {url}: {error}") from error
            times.append(time.time())
            scrapes.append(parse_series(response.text))
            if times[-1] >= deadline:
                break
            sleep(min(every_s, max(0.0, deadline - time.time())))
    values = {}
    for key in COUNTERS:
        names = sorted({series for scrape in scrapes for series in scrape[key]}) or [()]
        values[key] = np.array([[scrape[key].get(name, np.nan) for scrape in scrapes] for name in names])
    return Samples(np.array(times), values)


def write_report(summary: dict[str, Any], out: Path, source: str) -> tuple[Path, Path]:
    """A PNG with the four figures over time and an HTML page embedding it with the window's totals."""
    plt = pyplot()

    series, totals = summary["series"], summary["totals"]
    minutes = (series["time"] - series["time"][0]) / 60.0
    figure, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    panels = [
        (axes[0, 0], "Cost per 1,000 requests ($)", [("cascade", 1000 * series["cost_per_request"])]),
        (axes[0, 0], None, [("teacher only", 1000 * series["baseline_per_request"])]),
        (axes[0, 1], "Saved against teacher only (share)", [("saved", series["saved_share"])]),
        (axes[1, 0], "Escalation rate", [("escalated", series["escalation_rate"])]),
        (axes[1, 1], "Shadow agreement with the teacher", [("agreement", series["agreement"])]),
    ]
    for axis, title, lines in panels:
        for label, values in lines:
            axis.plot(minutes, values, marker=".", label=label)
        if title:
            axis.set_title(title)
        axis.grid(alpha=0.3)
    axes[0, 0].legend()
    for axis in axes[1]:
        axis.set_xlabel("minutes into the window")
    figure.suptitle(f"cascade-gateway report ({source})")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    png = out.with_suffix(".png")
    figure.savefig(png, dpi=110)
    plt.close(figure)

    rows = "".join(
        f"<tr><th>{html.escape(key)}</th><td>{value:.6g}</td></tr>" if isinstance(value, float) else ""
        for key, value in totals.items()
    )
    image = base64.b64encode(png.read_bytes()).decode("ascii")
    page = out.with_suffix(".html")
    page.write_text(
        "<!doctype html><meta charset='utf-8'><title>cascade-gateway report</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 12px;text-align:left}</style>"
        f"<h1>cascade-gateway report</h1><p>Source: {html.escape(source)}</p>"
        f"<table>{rows}</table><img alt='report' src='data:image/png;base64,{image}'>",
        encoding="utf-8",
    )
    return png, page


__all__ = [
    "COUNTERS",
    "Samples",
    "from_metrics_endpoint",
    "from_prometheus",
    "parse_counters",
    "summarise",
    "write_report",
]

"""The load-test suite: its arithmetic, the Locust scenarios against a no-op endpoint, and a smoke run of
``cascade loadtest`` end to end on tiny models (seconds per stage)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from benchmarks.loadtest import LoadTestSettings, run_loadtest
from loadtests.scenarios import scenario_stages as _stages
from loadtests.stats import ConfigurationRun, Stage, paired_accuracy_gap, quality, stage_stats, summarise
from serving.ports import free_local_port
from tests.builders import TinyPair

ROOT = Path(__file__).resolve().parents[1]


def _record(t: float, ms: float, status: int = 200, escalated: bool = False, **extra: Any) -> dict[str, Any]:
    record = {"t": t, "ms": ms, "status": status, "mix": ["main"], "index": [0], "gold": ["a"]}
    if status == 200:
        record |= {"label": ["a"], "served_by": ["student"], "escalated": [escalated]}
    return record | extra


def test_stage_stats_skip_the_warm_up_and_count_errors_and_escalations() -> None:
    records = [_record(100.5, 999.0)]  # in the warm-up: ignored
    records += [_record(101 + i / 10, float(i + 1), escalated=i % 4 == 0) for i in range(100)]
    records += [_record(110.5, 5.0, status=503)]
    stats = stage_stats(records, started=100.0, warmup_s=1.0, duration_s=12.0)
    assert stats["requests"] == 101
    assert stats["achieved_rps"] == pytest.approx(100 / 11)
    assert stats["p50_ms"] == pytest.approx(50.5)
    assert stats["p99_ms"] == pytest.approx(99.01)
    assert stats["error_rate"] == pytest.approx(1 / 101)
    assert stats["escalation_rate"] == pytest.approx(25 / 100)


def test_quality_scores_gold_and_agreement_only_on_the_main_mix() -> None:
    records = [
        _record(0, 1, index=[1, 2], gold=["a", "b"], label=["a", "a"], mix=["main", "main"]),
        _record(0, 1, index=[3], gold=["c"], label=["x"], mix=["hard"]),
    ]
    measured = quality(records, teacher_labels={1: "a", 2: "b"})
    assert measured == {"accuracy": 0.5, "agreement": 0.5}


def test_accuracy_gap_is_paired_on_the_texts_both_answered() -> None:
    teacher: dict[int, tuple[str | None, str]] = {1: ("a", "a"), 2: ("b", "b"), 3: ("c", "x")}
    cascade: dict[int, tuple[str | None, str]] = {1: ("a", "a"), 2: ("b", "z"), 4: ("d", "d")}
    assert paired_accuracy_gap(teacher, cascade) == pytest.approx(50.0)  # texts 1 and 2: 2 right vs 1


def _run(repeat: int, configuration: str, rps: float, accuracy: float, cost: float) -> ConfigurationRun:
    stage = Stage(repeat, configuration, rps, rps, 100, 10.0, 20.0, 30.0, 0.0, 0.0, True)
    return ConfigurationRun(
        repeat,
        configuration,
        [stage],
        sustained_rps=rps,
        sustained_rps_by_target={"100": rps, "200": 2 * rps},
        accuracy=accuracy,
        cost_per_1000_dollars=cost,
        at_sustained=stage,
        answers={i: ("a", "a" if i < round(1000 * accuracy) / 10 else "b") for i in range(100)},
    )


def test_summary_takes_ratios_within_a_repeat_then_their_median() -> None:
    runs = [
        _run(1, "teacher_only", 10, 0.90, 1.0),
        _run(1, "cascade", 30, 0.89, 0.2),
        _run(2, "teacher_only", 20, 0.92, 1.0),
        _run(2, "cascade", 40, 0.92, 0.3),
        _run(3, "teacher_only", 10, 0.91, 2.0),
        _run(3, "cascade", 25, 0.90, 0.2),
    ]
    summary = summarise(runs)
    ratios = summary["cascade_vs_teacher"]
    assert [r["throughput_ratio"] for r in ratios["per_repeat"]] == [3.0, 2.0, 2.5]
    assert ratios["median_throughput_ratio"] == 2.5  # not 30/10 from the medians of each side
    assert ratios["median_accuracy_gap_points"] == pytest.approx(1.0)  # paired on the answers: 90-89, 92-92, 91-90
    assert ratios["median_throughput_ratio_by_p99_target_ms"] == {"100": 2.5, "200": 2.5}
    assert ratios["median_cost_ratio"] == pytest.approx(0.2)
    assert summary["configurations"]["teacher_only"]["sustained_rps"] == 10


def test_scenario_shapes_are_bounded_and_shaped() -> None:
    assert _stages("steady", 10, 60) == [(60, 10)]
    ramp = _stages("ramp", 16, 80)
    assert [users for _, users in ramp] == [2, 4, 6, 8, 10, 12, 14, 16] and ramp[-1][0] == 80
    assert _stages("spike", 4, 50) == [(20.0, 4), (30.0, 20), (50, 4)]
    with pytest.raises(ValueError, match="steady, ramp, spike or drift"):
        _stages("flood", 1, 1)


@pytest.fixture()
def noop_server() -> Iterator[str]:
    port = free_local_port()
    process = subprocess.Popen([sys.executable, "-m", "loadtests.noop_server", "--port", str(port)], cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                httpx.post(url, json={}, timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.slow
def test_drift_scenario_switches_the_mix_halfway(noop_server: str, tmp_path: Path) -> None:
    data = tmp_path / "mix.jsonl"
    data.write_text("".join(json.dumps({"text": f"t{i}", "label": "ab"[i % 2]}) + "\n" for i in range(20)))
    results = tmp_path / "records.jsonl"
    env = {
        **os.environ,
        "CASCADE_DATASET": str(data),
        "CASCADE_SCENARIO": "drift",
        "CASCADE_USERS": "4",
        "CASCADE_DURATION_S": "4",
        "CASCADE_RATE_PER_USER": "10",
        "CASCADE_RESULTS": str(results),
    }
    locust = Path(sys.executable).parent / "locust"
    completed = subprocess.run(
        [
            str(locust),
            "-f",
            str(ROOT / "loadtests" / "locustfile.py"),
            "--headless",
            "--host",
            noop_server,
            "--only-summary",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert results.exists(), completed.stderr[-2000:]
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(records) > 20
    assert all(r["status"] == 200 for r in records)
    records.sort(key=lambda r: r["t"])
    first, last = records[: len(records) // 4], records[-len(records) // 4 :]
    assert {m for r in first for m in r["mix"]} == {"before"}
    assert {m for r in last for m in r["mix"]} == {"after"}
    # "before" holds the first half of the labels, "after" the other half
    assert {g for r in records for g, m in zip(r["gold"], r["mix"], strict=True) if m == "before"} == {"a"}
    assert {g for r in records for g, m in zip(r["gold"], r["mix"], strict=True) if m == "after"} == {"b"}


@pytest.mark.slow
def test_cascade_loadtest_smoke_run_writes_the_report(tiny_pair: TinyPair, tmp_path: Path) -> None:
    data = tmp_path / "traffic.jsonl"
    data.write_text(tiny_pair.data.read_text() * 5)
    settings = LoadTestSettings(
        teacher=str(tiny_pair.teacher),
        student=str(tiny_pair.student),
        dataset=data,
        output=tmp_path / "report",
        p99_target_ms=5000,
        start_rate=4,
        growth=2,
        max_rate=8,
        stage_seconds=4,
        warmup_seconds=1,
        repeats=1,
        overhead_requests=40,
        threshold=0.6,
        extra_p99_targets_ms=(10_000,),
    )
    lines: list[str] = []
    result = run_loadtest(settings, log=lines.append)
    print("\n".join(lines))
    for name in ("loadtest-ramp.json", "loadtest-ramp.csv", "loadtest-ramp.png", "loadtest-ramp.md"):
        assert (tmp_path / "report" / name).stat().st_size > 0, name
    summary = result["summary"]
    assert set(summary["configurations"]) == {"teacher_only", "student_only", "cascade"}
    for configuration in summary["configurations"].values():
        assert configuration["sustained_rps"] == 8  # the ramp's cap: every stage passed
        assert configuration["accuracy"] is not None
        assert configuration["cost_per_1000_dollars"] > 0
    assert summary["configurations"]["student_only"]["escalation_rate"] == 0
    assert summary["cascade_vs_teacher"]["median_throughput_ratio"] == 1.0
    assert summary["cascade_vs_teacher"]["median_throughput_ratio_by_p99_target_ms"] == {"5000": 1.0, "10000": 1.0}
    assert result["generator_ceiling"]["requests_per_s"] > 0
    assert result["overhead"]["median_student_direct_p50_ms"] > 0
    assert any("teacher_only" in line and "offered" in line for line in lines), "no per-stage progress"


@pytest.mark.slow
def test_side_by_side_smoke_run_measures_the_gateway_beside_both_references(
    tiny_pair: TinyPair, tmp_path: Path
) -> None:
    """``cascade loadtest`` (side by side): the plain server, the no-op Ray Serve app and the gateway's
    three routes each answer, and the report states every target."""
    from benchmarks.loadtest import run_side_by_side
    from benchmarks.serving_path import ServingPathSettings

    data = tmp_path / "traffic.jsonl"
    data.write_text(tiny_pair.data.read_text() * 5)
    settings = ServingPathSettings(
        teacher=str(tiny_pair.teacher),
        student=str(tiny_pair.student),
        users=(2,),
        texts_per_request=(1, 32),
        seconds=4,
        warmup_seconds=1,
        min_requests=20,
        p99_target_ms=10_000,
        single_requests=40,
        threshold=0.6,
        servers=("plain", "noop_ray", "gateway", "gateway_wide"),
    )
    lines: list[str] = []
    result = run_side_by_side(settings, data, tmp_path / "report", log=lines.append)
    print("\n".join(lines))
    assert (tmp_path / "report" / "loadtest.md").stat().st_size > 0
    assert json.loads((tmp_path / "report" / "loadtest.json").read_text()) == json.loads(json.dumps(result))
    rows = {row["configuration"]: row for row in result["rows"]}
    assert set(rows) == {
        "plain",
        "noop_ray",
        "gateway:student",
        "gateway:auto",
        "gateway:teacher",
        "gateway_wide:student",
        "gateway_wide:auto",
    }
    for name, row in rows.items():
        assert [(r["texts"], r["users"]) for r in row["rungs"]] == [(1, 2), (32, 2)], name
        assert all(r["error_rate"] == 0 and r["requests_per_s"] > 0 for r in row["rungs"]), name
        assert row["sustained_texts_per_s"]["1"] > 0 and row["single_request_p50_ms"] > 0, name
        assert row["memory_mib"] > 0, name
    assert rows["gateway:student"]["rungs"][0]["escalation_rate"] == 0
    assert result["teacher_offline_texts_per_s"] > 0
    assert set(result["targets"]) == {
        "student_vs_plain",
        "auto_vs_plain",
        "cascade_vs_teacher",
        "wide_student_vs_plain",
        "wide_auto_vs_plain",
        "single_request_p50_gap_ms",
        "teacher_vs_offline_batch_32",
    }
    auto_rung = rows["gateway:auto"]["at_sustained"]["1"]
    bound = result["auto_teacher_bound"]
    if auto_rung["escalation_rate"] > 0:
        assert bound["escalation_rate"] == auto_rung["escalation_rate"]
        assert bound["requests_per_s"] == pytest.approx(
            result["teacher_offline_texts_per_s"] / bound["escalation_rate"]
        )
    else:
        assert bound is None


class _ScriptedDriver:
    """A load driver whose rungs answer at a fixed rate: what the rung logic sees, without Locust."""

    def __init__(self, requests_per_s: float) -> None:
        self.requests_per_s = requests_per_s
        self.runs: list[float] = []

    def locust(self, url: str, *, seconds: float, **_: object) -> tuple[list[dict[str, object]], float]:
        self.runs.append(seconds)
        count = int(seconds * self.requests_per_s)
        records = [
            {"t": i / self.requests_per_s, "status": 200, "ms": 50.0, "escalated": [False]} for i in range(count)
        ]
        return records, 0.0


@pytest.mark.parametrize(
    ("requests_per_s", "expected_runs"),
    [(100.0, [10.0]), (4.0, [10.0, 60.0]), (20.0, [10.0, 2.0 + 1.2 * 8.0 * 200 / 160])],
)
def test_a_rung_with_too_few_requests_runs_again_for_longer(requests_per_s: float, expected_runs: list[float]) -> None:
    from benchmarks.serving_path import ServingPathSettings, _closed_loop

    driver = _ScriptedDriver(requests_per_s)
    settings = ServingPathSettings(teacher="t", student="s", seconds=10.0, warmup_seconds=2.0, min_requests=200)
    rung = _closed_loop(driver, "http://x", "teacher", 4, 1, settings)  # type: ignore[arg-type]
    assert driver.runs == pytest.approx(expected_runs)
    assert rung.requests_per_s == pytest.approx(requests_per_s, rel=0.05)


def test_the_teacher_bounds_route_auto_by_its_throughput_over_the_escalation_rate() -> None:
    from benchmarks.serving_path import auto_teacher_bound

    bound = auto_teacher_bound(plain_requests_per_s=3000.0, escalation_rate=0.1, teacher_texts_per_s=100.0)
    assert bound is not None
    assert bound["requests_per_s"] == pytest.approx(1000.0)  # 100 texts/s, one in ten escalated
    assert bound["vs_plain"] == pytest.approx(1 / 3)
    # 0.6 of 3,000 req/s = 1,800 req/s: the teacher keeps up at 100/1,800 escalated, or if 1.8x as fast.
    assert bound["escalation_for_target"] == pytest.approx(100 / 1800)
    assert bound["teacher_speedup_for_target"] == pytest.approx(1.8)
    assert auto_teacher_bound(3000.0, 0.0, 100.0) is None  # nothing escalated: the teacher bounds nothing


def test_the_load_test_report_says_what_the_teacher_allows_route_auto() -> None:
    from benchmarks.serving_path import auto_teacher_bound
    from loadtests.report import _auto_bound_text

    result = {
        "teacher_offline_texts_per_s": 89.2,
        "targets": {"auto_vs_plain": {"measured": 0.26, "target": 0.6, "met": False}},
        "auto_teacher_bound": auto_teacher_bound(2961.0, 0.0857, 89.2),
    }
    text = " ".join(_auto_bound_text(result).split())
    assert "escalated 8.6% of texts" in text
    assert "at most at **1041 req/s**" in text
    assert "0.35 of the plain server (the gateway sustained 0.26;" in text
    assert "an escalation rate of at most 5.0%" in text and "a teacher 1.7x as fast" in text
    assert _auto_bound_text({**result, "auto_teacher_bound": None}) == ""

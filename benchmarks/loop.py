"""``cascade benchmark-loop``: the re-distillation loop on a real dataset, as an operator would run it.

It lives in ``benchmarks`` (not ``loadtests``, whose tools only speak HTTP) because it builds and
registers models as well as sending traffic.

Intents held out of the student's training appear in the traffic; the gateway (``cascade serve``, a
separate process) escalates and shadows them and logs what the teacher answered; ``cascade
redistill`` (another process) trains on that log and promotes; the gateway's registry watcher swaps
the new student in while requests keep coming. Measured, on texts no model trained on:

- pre-drift (known intents), drift (held-out intents mixed in), post-swap (fresh texts of the drift
  mix): escalation rate, agreement with the teacher, exported PSI and shadow disagreement;
- the swap: every request sent while ``redistill`` ran and after, and how many failed;
- the time from the job's start to the first request the new student answered;
- a candidate trained on shuffled teacher answers: the gate's verdict, and which version served.

Data (from ``train.jsonl``, split with a seeded permutation; dev is not used):
``held_out`` intents are removed from the student's training. Of the known intents' texts, 70%
train the student; the rest is split four ways: calibration, pre-drift, drift, post. Of the held-out
intents' texts, 70% go to the drift phase and 30% to the post phase, where known texts are added to
keep the drift phase's mix.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from benchmarks.closed_loop import ContinuousLoad, phase, teacher_labels, wait_for_log
from router.cost import DEFAULT_CPU_NODE_DOLLARS_PER_HOUR
from serving.constants import KEEP_TEXT_FOR_REDISTILL as OPT_IN_TEXT
from serving.ports import free_local_port
from serving.process import GatewayProcess, cascade_command

# Both roles run on this machine's CPU: price both as the CPU node (as benchmark-cascade).
CPU_PRICE = DEFAULT_CPU_NODE_DOLLARS_PER_HOUR


@dataclass
class LoopBenchmarkSettings:
    dataset: Path
    teacher: Path
    work: Path
    output: Path
    held_out: int = 8
    seed: int = 0
    student_epochs: int = 30
    max_quality_loss: float = 0.3
    shadow_rate: float = 0.2
    redistill_epochs: int = 10
    redistill_lr: float = 2e-3
    load_workers: int = 2
    phase_workers: int = 4
    threads: int = 1
    reproduce: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Split:
    held_out: list[str]
    student_train: list[dict[str, str]]
    calibration: list[dict[str, str]]
    pre: list[str]
    drift: list[str]
    post: list[str]
    drift_new_share: float


def split(rows: list[dict[str, str]], held_out: int, seed: int) -> Split:
    """The seeded split the module docstring describes."""
    rng = np.random.default_rng(seed)
    labels = sorted({row["label"] for row in rows})
    new_labels = sorted(str(label) for label in rng.choice(labels, size=held_out, replace=False))
    known = [rows[i] for i in rng.permutation(len(rows)) if rows[i]["label"] not in new_labels]
    new = [row["text"] for row in rows if row["label"] in new_labels]
    new = [new[i] for i in rng.permutation(len(new))]
    cut = int(0.7 * len(known))
    rest = known[cut:]
    quarter = len(rest) // 4
    calibration, pre, drift_known, post_known = (rest[i * quarter : (i + 1) * quarter] for i in range(4))
    new_cut = int(0.7 * len(new))
    drift_new, post_new = new[:new_cut], new[new_cut:]
    share = len(drift_new) / (len(drift_new) + len(drift_known))
    post_known_n = round(len(post_new) * (1 - share) / share)
    drift = [r["text"] for r in drift_known] + drift_new
    post = [r["text"] for r in post_known[:post_known_n]] + post_new
    return Split(
        held_out=new_labels,
        student_train=known[:cut],
        calibration=calibration,
        pre=[r["text"] for r in pre],
        drift=[drift[i] for i in rng.permutation(len(drift))],
        post=[post[i] for i in rng.permutation(len(post))],
        drift_new_share=share,
    )


def _write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _prepare_student(s: LoopBenchmarkSettings, data: Split, log: Any) -> tuple[Path, Path]:
    """Distil the student on the known intents and calibrate it (reused when the split is the same).

    Returns the student's folder and its training file (redistill's base data).
    """
    from distill.build import BuildOptions, distill_student
    from distill.calibrate import calibrate, write_calibration
    from distill.predictions import predict
    from distill.training import TrainSettings
    from serving.model_ref import resolve_model

    student = s.work / "student"
    train = _write_jsonl(s.work / "student-train.jsonl", data.student_train)
    calibration = _write_jsonl(s.work / "calibration.jsonl", data.calibration)
    stamp = {"held_out": data.held_out, "rows": len(data.student_train), "epochs": s.student_epochs, "seed": s.seed}
    marker = s.work / "student.json"
    if student.exists() and marker.exists() and json.loads(marker.read_text()) == stamp:
        log(f"reusing the student in {student}")
        return student, train
    log(f"distilling the student on {len(data.student_train)} texts of the known intents (held out: {data.held_out})")
    options = BuildOptions(
        name="loop-student",
        version="1",
        overwrite=True,
        threads=s.threads * 2,
        train=TrainSettings(epochs=s.student_epochs, learning_rate=3e-3, batch_size=64, patience=4, seed=s.seed),
    )
    distill_student(s.teacher, train, student, options, shape="bag_of_embeddings", dev_path=calibration)
    predictions = predict(resolve_model(str(s.teacher)), resolve_model(str(student)), calibration, threads=s.threads)
    report = calibrate(
        predictions, "max_quality_loss", s.max_quality_loss, student_price=CPU_PRICE, teacher_price=CPU_PRICE
    )
    write_calibration(student, report)
    marker.write_text(json.dumps(stamp), encoding="utf-8")
    return student, train


def _redistill(s: LoopBenchmarkSettings, registry: Path, traffic: Path, base: Path, *extra: str) -> dict[str, Any]:
    command = cascade_command(
        "redistill",
        "--registry",
        str(registry),
        "--traffic-log",
        str(traffic),
        "--state",
        str(s.work / "redistill-state"),
        "--base-train",
        str(base),
        "--epochs",
        str(s.redistill_epochs),
        "--lr",
        str(s.redistill_lr),
        "--max-quality-loss",
        str(s.max_quality_loss),
        "--threads",
        str(s.threads),
        "--shadow-rate",
        str(s.shadow_rate),
        *extra,
    )
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"redistill failed ({done.returncode}): {done.stderr[-3000:]}")
    summary = json.loads(done.stdout[done.stdout.rindex("{\n") :])
    report: dict[str, Any] = json.loads(Path(summary["report_path"]).read_text(encoding="utf-8"))
    return report


def run_loop_benchmark(s: LoopBenchmarkSettings, log: Any = print) -> dict[str, Any]:
    from serving.registry import Registry

    s.work.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in (s.dataset / "train.jsonl").read_text(encoding="utf-8").splitlines() if line]
    data = split(rows, s.held_out, s.seed)
    student, base = _prepare_student(s, data, log)
    for stale in ("registry", "traffic", "redistill-state"):
        shutil.rmtree(s.work / stale, ignore_errors=True)
    registry = Registry(s.work / "registry")
    for which, artifact in (("teacher", s.teacher), ("student", student)):
        entry = registry.add(artifact)
        registry.promote(which, entry.name, entry.version)
    port, metrics_port = free_local_port(), free_local_port()
    role: dict[str, Any] = {
        "threads": s.threads,
        "batching": {"max_batch_size": 32, "batch_wait_timeout_s": 0.005},
        "deployment": {"num_cpus": 0, "max_ongoing_requests": 64, "max_queued_requests": 4096},
    }
    traffic = s.work / "traffic"
    config: dict[str, Any] = {
        "http": {"host": "127.0.0.1", "port": port},
        "metrics": {"port": metrics_port},
        "limits": {"max_inputs": 64},
        "cost": {"student_dollars_per_hour": CPU_PRICE, "teacher_dollars_per_hour": CPU_PRICE},
        "shadow": {"rate": s.shadow_rate, "max_in_flight": 8},
        "drift": {"window": 500, "min_samples": 200},
        "traffic_log": {"path": str(traffic), "flush_interval_s": 1.0, "keep_text": OPT_IN_TEXT},
        # redistill trains on the same cores: wait for every teacher answer rather than degrade it
        "resilience": {"student_timeout_s": 60, "teacher_timeout_s": 60, "request_timeout_s": 120},
        "reload": {"poll_s": 1.0},
        "student": {"model": f"registry:{registry.root}/student", **role},
        "teacher": {"model": f"registry:{registry.root}/teacher", **role},
    }
    config_path = s.work / "gateway.yaml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    url, metrics_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics"
    log("labelling every phase's texts with the teacher, offline")
    teacher = teacher_labels(str(s.teacher), data.pre + data.drift + data.post, max_length=64, threads=s.threads * 2)
    result: dict[str, Any] = {"settings": {k: str(v) for k, v in asdict(s).items()}, "held_out": data.held_out}
    gateway = GatewayProcess(config_path, s.work / "gw.log", port=port)
    try:
        measure = {"workers": s.phase_workers, "metrics_url": metrics_url, "metrics_deadline_s": 120.0}
        phases = [phase("pre-drift", url, data.pre, teacher, **measure)]  # type: ignore[arg-type]
        log(f"pre-drift: {phases[-1]}")
        phases.append(phase("drift", url, data.drift, teacher, **measure))  # type: ignore[arg-type]
        log(f"drift: {phases[-1]}")
        from serving.traffic_log import read_traffic_log

        logged = wait_for_log(lambda: read_traffic_log(traffic)[0].num_rows, 1, settle_s=3.0)
        log(f"traffic log: {logged} rows; redistill under continuous load")
        with ContinuousLoad(url, data.drift, workers=s.load_workers) as load:
            started = time.time()
            report = _redistill(s, registry.root, traffic, base)
            job_s = time.time() - started
            log(f"redistill: {report['outcome']}: {report['why']}")
            swap: dict[str, Any] = {"job_seconds": round(job_s, 1), "outcome": report["outcome"], "why": report["why"]}
            if report["outcome"] == "promoted":
                first = load.wait_for(report["candidate"], deadline_s=300)
                swap["seconds_from_job_start_to_serving"] = round(first - started, 1)
                swap["seconds_from_promotion_to_serving"] = round(first - report["ended"], 1)
                load.wait_for_requests(200)
        swap["load"] = load.summary()
        swap["report"] = {k: report.get(k) for k in ("new_teacher_labels", "usable_texts", "evaluation", "training")}
        log(f"swap: {swap['load']}")
        phases.append(phase("post-swap", url, data.post, teacher, **measure))  # type: ignore[arg-type]
        log(f"post-swap: {phases[-1]}")
        with ContinuousLoad(url, data.post, workers=1) as load:
            worse = _redistill(s, registry.root, traffic, base, "--force", "--shuffle-labels")
            time.sleep(3 * config["reload"]["poll_s"])
        result["shuffled_candidate"] = {
            "outcome": worse["outcome"],
            "why": worse["why"],
            "evaluation": worse.get("evaluation"),
            "load": load.summary(),
        }
        log(f"shuffled candidate: {worse['outcome']}: {worse['why']}")
    finally:
        gateway.stop()
    result.update(phases=phases, swap=swap, drift_new_share=data.drift_new_share)
    result["targets"] = _targets(phases, swap)
    return result


def _targets(phases: list[dict[str, Any]], swap: dict[str, Any]) -> dict[str, Any]:
    pre, _, post = phases
    return {
        "escalation_within_1.2x": {  # pre-drift traffic: the known intents; post: the drift phase's mix
            "pre": pre["escalation_rate"],
            "post": post["escalation_rate"],
            "ratio": post["escalation_rate"] / pre["escalation_rate"] if pre["escalation_rate"] else None,
            "met": post["escalation_rate"] <= 1.2 * pre["escalation_rate"],
        },
        "agreement_within_0.5_points": {
            "pre": pre["agreement"],
            "post": post["agreement"],
            "gap_points": 100 * (pre["agreement"] - post["agreement"]),
            "met": post["agreement"] >= pre["agreement"] - 0.005,
        },
        "zero_failed_during_swap": {"failed": swap["load"]["failed"], "met": swap["load"]["failed"] == 0},
    }


def write_loop_report(result: dict[str, Any], output: Path, command: str) -> tuple[Path, Path]:
    output.mkdir(parents=True, exist_ok=True)
    json_path = output / "closed-loop.json"
    json_path.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    pct = lambda v: "–" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    lines = [
        "# Closed loop: drift, redistill, hot swap",
        "",
        f"Reproduce: `{command}` (needs the teacher of `cascade benchmark-distill` in runs/benchmark/banking77).",
        "",
        "One run on this project's 2-core machine: the gateway (`cascade serve`), the load clients and the "
        "`cascade redistill` job share the two cores. Split, phases and measures: `distill/loop_benchmark.py`.",
        "",
        f"Held-out intents ({len(result['held_out'])}): {', '.join(result['held_out'])}. "
        f"Share of held-out intents in the drift and post-swap traffic: {pct(result['drift_new_share'])}.",
        "",
        "| phase | texts | escalation | agreement with teacher | exported PSI | shadow disagreement | failed |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for p in result["phases"]:
        exported = p.get("exported") or {}
        psi = exported.get("psi")
        lines.append(
            f"| {p['phase']} ({', '.join(p['student_versions'])}) | {p['texts']} | {pct(p['escalation_rate'])} | "
            f"{pct(p['agreement'])} | {'–' if psi is None else f'{psi:.3f}'} | "
            f"{pct(exported.get('shadow_disagreement'))} | {p['failed']} |"
        )
    swap, targets = result["swap"], result["targets"]
    training = swap["report"].get("training") or {}
    evaluation = swap["report"].get("evaluation") or {}
    load = swap["load"]
    lines += [
        "",
        f"Redistill: **{swap['outcome']}** ({swap['why']}); the job took {swap['job_seconds']} s, of which "
        f"{training.get('wall_time_s', '–')} s building the candidate (teacher logits for the base data, then "
        f"training on {training.get('logged_texts', '–')} distinct logged texts, "
        f"{(swap['report'].get('evaluation') or {}).get('holdout_texts', '–')} more held back for the gate, "
        f"and {training.get('base_rows', '–')} base rows).",
        f"Time from the job's start to the first request the new student answered: "
        f"**{swap.get('seconds_from_job_start_to_serving', '–')} s**; "
        f"{swap.get('seconds_from_promotion_to_serving', '–')} s of it after the job ended "
        "(registry poll, artifact check, model load and warm-up, under the same load).",
        f"The new student's calibration ({evaluation.get('calibration_sample', '–')}, "
        f"{evaluation.get('calibration_texts', '–')} held-back texts): expected escalation "
        f"{pct((evaluation.get('candidate') or {}).get('expected_escalation_rate'))}, served "
        f"{pct(result['phases'][-1]['escalation_rate'])} after the swap.",
        f"Continuous load during the job and the swap: {load['requests']} requests in {load['seconds']} s "
        f"({load['requests_per_s']} req/s), **{load['failed']} failed**, versions {load['student_versions']}.",
        "",
        "| target | measured | met |",
        "| --- | --- | --- |",
        f"| escalation after one cycle within 1.2× of pre-drift | {pct(targets['escalation_within_1.2x']['post'])} vs "
        f"{pct(targets['escalation_within_1.2x']['pre'])} (×{targets['escalation_within_1.2x']['ratio']:.2f}) | "
        f"{'yes' if targets['escalation_within_1.2x']['met'] else 'no'} |",
        f"| agreement within 0.5 points of pre-drift | {pct(targets['agreement_within_0.5_points']['post'])} vs "
        f"{pct(targets['agreement_within_0.5_points']['pre'])} "
        f"(after − before: {-targets['agreement_within_0.5_points']['gap_points']:+.2f} points) | "
        f"{'yes' if targets['agreement_within_0.5_points']['met'] else 'no'} |",
        f"| zero failed requests during the swap | {load['failed']} of {load['requests']} | "
        f"{'yes' if targets['zero_failed_during_swap']['met'] else 'no'} |",
    ]
    shuffled = result.get("shuffled_candidate")
    if shuffled:
        lines += [
            "",
            f"Candidate trained on shuffled teacher answers: **{shuffled['outcome']}** ({shuffled['why']}); "
            f"served meanwhile: {shuffled['load']['student_versions']}, {shuffled['load']['failed']} failed.",
        ]
    md_path = output / "closed-loop.md"
    md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return json_path, md_path

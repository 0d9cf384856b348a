"""``cascade benchmark-cascade``: does the calibrated cascade keep its promise on texts no step saw?

The benchmark's models (``benchmark-distill``) early-stopped on a slice of the *training* split, so the
dev split is untouched by every training step. Each dev split is halved at random: ``cascade
calibrate``'s logic chooses on one half (the calibration half), every reported figure is measured on
the other (the evaluation half). Repeated for ``--seeds`` different halvings, with the models fixed,
so the spread shows how much a ~500-text half moves the result. A plan with ``calibration_rows`` also
kept that many labelled training rows from every step: each calibration half gets them too (a bound on
a 0.3-point gap needs more than ~500 texts where student and teacher are close), evaluation stays on dev.

Methods, each for the target "accuracy at most 0.3 points below the teacher, at the lowest cost":

- ``<student> max_prob (point estimate)``: what calibrate did before: max-prob, threshold on the gap
  measured on the calibration half;
- ``<student> max_prob``: max-prob, threshold on the gap's 90% upper bound;
- ``<student> calibrate``: ``cascade calibrate`` as shipped (bound at 90%, learned rule kept only
  where it beats the closed-form signals on texts it was not fitted on);
- ``chain bag → layers → teacher``: ``distill.chain`` (stage rules max-prob / agreement / learned).

Cost: measured CPU seconds per request (ONNX fp32, batch 32, 1 thread) × the same CPU node price for
every stage (all ran on this machine's CPU), so ratios are compute-time ratios; the GPU-price view
charges the same teacher seconds at the GPU node's price instead.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.distillation import CALIBRATION_FILE, PLANS, machine
from distill.calibrate import CalibrationReport, calibrate, policy_from, rule_scores
from distill.chain import ChainData, StageOutputs, calibrate_chain, chain_outcomes
from distill.curve import curve, plot_curve
from distill.data import read_jsonl
from distill.evaluate import time_backend
from distill.predictions import Predictions, batched_logits
from router import Signal
from router.bounds import paired_gap_upper_bound
from router.chain import ChainOutcomes, ChainPoint, evaluate, serving_stage, share_of_chain_oracle_savings
from router.cost import DEFAULT_CPU_NODE_DOLLARS_PER_HOUR, DEFAULT_GPU_NODE_DOLLARS_PER_HOUR, CostModel
from router.tradeoff import wilson_interval
from serving.backends import load_backend
from serving.model_ref import resolve_model

TARGET_POINTS = 0.3
CONFIDENCE = 0.9
CPU_PRICE = DEFAULT_CPU_NODE_DOLLARS_PER_HOUR
GPU_PRICE = DEFAULT_GPU_NODE_DOLLARS_PER_HOUR
STUDENTS = ("bag", "layers")


@dataclass(frozen=True)
class DevOutputs:
    """Every model's logits on the whole dev split, computed once, and its measured seconds per request.

    Rows ``dev_rows`` onwards, where a plan has them, are its extra calibration texts (``CALIBRATION_FILE``):
    every halving adds them to its calibration half; nothing is ever measured on them.
    """

    texts: list[str]
    gold: np.ndarray
    outputs: dict[str, StageOutputs]
    dev_rows: int

    @property
    def extra_calibration_rows(self) -> np.ndarray:
        return np.arange(self.dev_rows, len(self.texts))

    def split(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(calibration rows, evaluation rows) of one halving of dev, the extra calibration texts on the first."""
        calibration, evaluation = halves(self.dev_rows, seed)
        return np.concatenate([calibration, self.extra_calibration_rows]), evaluation

    def predictions(self, student: str, rows: np.ndarray) -> Predictions:
        teacher, chosen = self.outputs["teacher"], self.outputs[student]
        return Predictions(
            [self.texts[i] for i in rows],
            self.gold[rows],
            teacher.logits[rows],
            chosen.logits[rows],
            teacher.seconds,
            chosen.seconds,
        )

    def chain(self, rows: np.ndarray) -> ChainData:
        lengths = np.asarray([len(text) for text in self.texts], dtype=np.float64)
        whole = ChainData((self.outputs["bag"], self.outputs["layers"]), self.outputs["teacher"], self.gold, lengths)
        return whole.subset(rows)


def predict_dev(folder: Path, dev: Path, threads: int, calibration: Path | None = None) -> DevOutputs:
    """Every model's logits on dev (then on ``calibration``'s texts, if given) and its seconds per request."""
    refs = {"teacher": resolve_model(str(folder / "teacher"))}
    refs |= {kind: resolve_model(str(folder / f"student-{kind}")) for kind in STUDENTS}
    labels = refs["teacher"].labels
    data = read_jsonl(dev, known_labels=labels)
    extra = read_jsonl(calibration, known_labels=labels) if calibration is not None else None
    texts = data.texts + (extra.texts if extra else [])
    gold = data.label_ids(list(labels)) + (extra.label_ids(list(labels)) if extra else [])
    outputs = {}
    for name, ref in refs.items():
        backend = load_backend(ref, threads=threads)
        seconds = time_backend(backend, data.texts[:256], 32).cpu_ms_per_example / 1000
        outputs[name] = StageOutputs(name, batched_logits(backend, texts), seconds)
    return DevOutputs(texts, np.asarray(gold), outputs, len(data.texts))


def calibration_file(name: str, work: Path) -> Path | None:
    """The plan's extra calibration texts, written by ``benchmark-distill`` (None where the plan has none)."""
    plan = PLANS.get(name)
    if plan is None or not plan.calibration_rows:
        return None
    path = work / name / CALIBRATION_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run cascade benchmark-distill for {name} first")
    rows = sum(1 for line in path.open(encoding="utf-8") if line.strip())
    if rows != plan.calibration_rows:
        raise ValueError(f"{path} has {rows} rows, the plan keeps {plan.calibration_rows}: rerun benchmark-distill")
    return path


def halves(size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(1000 + seed).permutation(size)
    return np.sort(order[: size // 2]), np.sort(order[size // 2 :])


def _measured(outcomes: ChainOutcomes, point: ChainPoint, gpu: ChainOutcomes) -> dict[str, Any]:
    """Figures of one routing on the evaluation half (CPU prices, and the same routing at GPU prices)."""
    n = outcomes.size
    teacher_only = 1000 * outcomes.stage_dollars[-1]
    served = np.asarray(point.served_share)
    gpu_cost = 1000 * float(np.cumsum(gpu.stage_dollars) @ served)
    teacher = outcomes.correct[-1]
    # discordant texts for the interval of the measured gap
    right = np.stack(outcomes.correct)[serving_stage(outcomes, point.thresholds), np.arange(n)]
    worse, better = int((teacher & ~right).sum()), int((right & ~teacher).sum())
    high = float(paired_gap_upper_bound(worse, better, n, 0.975))
    low = -float(paired_gap_upper_bound(better, worse, n, 0.975))
    return {
        "served_share": list(point.served_share),
        "escalation_rate": point.escalation_rate,
        "escalation_95ci": wilson_interval(point.escalation_rate * n, n),
        "accuracy": point.quality,
        "teacher_accuracy": outcomes.teacher_quality,
        "gap_points": 100 * (outcomes.teacher_quality - point.quality),
        "gap_points_95ci": (100 * low, 100 * high),
        "cost_ratio": point.dollars_per_1000 / teacher_only,
        "cost_ratio_gpu_price": gpu_cost / (1000 * gpu.stage_dollars[-1]),
        "share_of_oracle_savings": share_of_chain_oracle_savings(outcomes, point),
        "promise_kept": 100 * (outcomes.teacher_quality - point.quality) <= TARGET_POINTS + 1e-9,
    }


def _two_model(
    dev: DevOutputs, student: str, calibration_rows: np.ndarray, evaluation_rows: np.ndarray, **how: Any
) -> tuple[dict[str, Any], tuple[Predictions, np.ndarray, CalibrationReport]]:
    """Calibrate with ``calibrate(**how)`` on one half; the routing and its figures on the other half."""
    report = calibrate(
        dev.predictions(student, calibration_rows),
        "max_quality_loss",
        TARGET_POINTS,
        student_price=CPU_PRICE,
        teacher_price=CPU_PRICE,
        **how,
    )
    policy = policy_from(report.calibration, report.temperature)
    held_out = dev.predictions(student, evaluation_rows)
    scores = rule_scores(held_out, policy)
    student_right, teacher_right = held_out.correctness()

    def outcomes(teacher_price: float) -> ChainOutcomes:
        cost = CostModel(held_out.student_seconds, held_out.teacher_seconds, CPU_PRICE, teacher_price)
        return ChainOutcomes.from_arrays(
            [scores], [student_right, teacher_right], [cost.student_dollars, cost.teacher_dollars]
        )

    cpu = outcomes(CPU_PRICE)
    point = evaluate(cpu, (report.threshold,))
    bound = report.expected.chosen.quality_loss_bound
    return {
        **_measured(cpu, point, outcomes(GPU_PRICE)),
        "rule": report.signal.value,
        "kept": report.calibration.rule_choice.kept if report.calibration.rule_choice else report.signal.value,
        "calibration_bound_points": None if bound is None else 100 * bound,
        "threshold": report.threshold,
        "temperature": report.temperature,
    }, (held_out, scores, report)


def _chain(dev: DevOutputs, calibration_rows: np.ndarray, evaluation_rows: np.ndarray, seed: int) -> dict[str, Any]:
    chosen = calibrate_chain(
        dev.chain(calibration_rows),
        TARGET_POINTS,
        student_price=CPU_PRICE,
        teacher_price=CPU_PRICE,
        confidence_level=CONFIDENCE,
        seed=seed,
    )
    held_out = dev.chain(evaluation_rows)
    cpu = chain_outcomes(held_out, chosen.rules, student_price=CPU_PRICE, teacher_price=CPU_PRICE)
    gpu = chain_outcomes(held_out, chosen.rules, student_price=CPU_PRICE, teacher_price=GPU_PRICE)
    return {
        **_measured(cpu, evaluate(cpu, chosen.thresholds), gpu),
        "rule": chosen.name,
        "kept": chosen.name,
        "calibration_bound_points": 100 * chosen.chosen.quality_loss_bound,
        "threshold": list(chosen.thresholds),
        "compared": chosen.compared,
    }


def run_seed(dev: DevOutputs, seed: int) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Every method on one halving; also what the curves of the primary seed need."""
    calibration_rows, evaluation_rows = dev.split(seed)
    results: dict[str, dict[str, Any]] = {}
    curves: dict[str, Any] = {}
    for student in STUDENTS:
        for label, level in ((" (point estimate)", None), ("", CONFIDENCE)):
            results[f"{student} max_prob{label}"], _ = _two_model(
                dev,
                student,
                calibration_rows,
                evaluation_rows,
                rule="signals",
                signals=(Signal.MAX_PROB,),
                confidence_level=level,
            )
        results[f"{student} calibrate"], curves[student] = _two_model(
            dev, student, calibration_rows, evaluation_rows, rule="auto", confidence_level=CONFIDENCE, seed=seed
        )
    results["chain bag → layers → teacher"] = _chain(dev, calibration_rows, evaluation_rows, seed)
    return results, curves


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def run_cascade_dataset(
    name: str, datasets: Path, work: Path, output: Path, threads: int, seeds: int
) -> dict[str, Any]:
    dev = predict_dev(work / name, datasets / name / "dev.jsonl", threads, calibration_file(name, work))
    per_seed = []
    for seed in range(seeds):
        results, curves = run_seed(dev, seed)
        per_seed.append(results)
        if seed == 0:
            for student, (held_out, scores, report) in curves.items():
                cost = CostModel(held_out.student_seconds, held_out.teacher_seconds, CPU_PRICE, CPU_PRICE)
                figure = curve(
                    held_out, scores, label=report.signal.value, cost=cost, chosen_threshold=report.threshold
                )
                plot_curve(
                    figure, output / f"cascade-{name}-{student}.png", f"{name}: {student} student, evaluation half"
                )
    methods = list(per_seed[0])
    summary = {
        method: {
            key: _spread([seed[method][key] for seed in per_seed])
            for key in (
                "cost_ratio",
                "cost_ratio_gpu_price",
                "gap_points",
                "escalation_rate",
                "share_of_oracle_savings",
            )
        }
        | {"promise_kept": sum(seed[method]["promise_kept"] for seed in per_seed)}
        for method in methods
    }
    return {
        "dataset": name,
        "dev_rows": dev.dev_rows,
        "halves": [len(halves(dev.dev_rows, 0)[0]), len(halves(dev.dev_rows, 0)[1])],
        "extra_calibration_rows": len(dev.extra_calibration_rows),
        "seeds": seeds,
        "seconds_per_request": {k: v.seconds for k, v in dev.outputs.items()},
        "accuracy_on_dev": {
            k: float((v.logits[: dev.dev_rows].argmax(axis=1) == dev.gold[: dev.dev_rows]).mean())
            for k, v in dev.outputs.items()
        },
        "seed0": per_seed[0],
        "summary": summary,
        "per_seed": per_seed,
    }


def _range(spread: dict[str, float], digits: int = 3) -> str:
    return f"{spread['median']:.{digits}f} ({spread['min']:.{digits}f}–{spread['max']:.{digits}f})"


def _verdicts(result: dict[str, Any], method: str) -> str:
    s = result["summary"][method]
    cost, share = s["cost_ratio"]["median"], s["share_of_oracle_savings"]["median"]
    cheap = 0.15 if result["dataset"] in ("banking77", "clinc150") else 1 / 3
    marks = [
        f"cost ≤ {cheap:.3g}: {'met' if cost <= cheap else 'NOT met'}",
        f"≥ 0.90 of oracle savings: {'met' if share >= 0.90 else 'NOT met'}",
        f"gap ≤ {TARGET_POINTS} (median): {'met' if s['gap_points']['median'] <= TARGET_POINTS else 'NOT met'}",
    ]
    return "; ".join(marks)


def write_cascade_report(results: list[dict[str, Any]], command: str, output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    payload = {"command": command, "machine": machine(), "results": results}
    (output / "cascade.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    lines = [
        "# Cascade benchmark: does calibration keep its promise on texts no step saw?",
        "",
        "Each dataset below names the command that measured it (`--datasets-only` reruns one).",
        "",
        "The models early-stopped on a slice of the training split; the dev split was seen by no training",
        "step. Each dev split is halved at random: calibration chooses on one half (plus, where a section",
        "says so, training rows that no step saw), every figure below is",
        f"measured on the other. Target: accuracy at most {TARGET_POINTS} points below the teacher, at the",
        f"lowest cost; bounds are one-sided at {CONFIDENCE:.0%}. Each row is the median over the seeds'",
        "halvings (min–max in brackets); *kept* counts the seeds where the evaluation half's gap met the target.",
        "A half of ~500 texts measures a gap only to about ±1.5 points (the seed-0 column's 95% interval), so",
        "even a cascade whose true gap is 0 shows more than 0.3 on some halves: *kept* of a sound rule is below",
        "10/10, and the median gap over seeds is the steadier figure. The point-estimate rows show the old",
        "choice: a threshold on the gap the calibration half showed, which new texts exceed about half the time.",
        "",
        "Cost: measured CPU seconds per request (ONNX fp32, batch 32, 1 thread) × the same CPU node price for",
        "every stage (all ran on this machine's CPU): compute-time ratios. *GPU price*: the same routing with",
        f"the teacher's seconds charged at the GPU node's price (${GPU_PRICE}/h against ${CPU_PRICE}/h).",
        "Oracle: the cheapest routing that reaches the method's accuracy knowing every model's answers (for",
        "the chain, it stops at the first stage that is right), so a share of its savings is at most 1.",
        "",
        "The chain's thresholds are tested in an order fixed without labels (from the surest to the cheapest,",
        "by cost and each stage's own confidence), stopping at the first that fails: picking the cheapest of",
        "thousands of candidates whose bound passes on the same texts would make the bound optimistic. The",
        "choice among the rule combinations (at most six) is not corrected for. It is what",
        "`cascade calibrate --middle` does and what the gateway serves.",
        "",
    ]
    for result in results:
        seconds = ", ".join(f"{k} {1000 * v:.2f} ms" for k, v in result["seconds_per_request"].items())
        accuracy = ", ".join(f"{k} {v:.4f}" for k, v in result["accuracy_on_dev"].items())
        extra = result.get("extra_calibration_rows", 0)
        beside = (
            f" Every calibration half also has the {extra:,} training rows that no step saw "
            f"(`{CALIBRATION_FILE}` of benchmark-distill); evaluation halves are dev only."
            if extra
            else ""
        )
        lines += [
            f"## {result['dataset']}",
            "",
            f"Command: `{result.get('command', command)}`",
            "",
            f"Dev {result['dev_rows']} texts, halves {result['halves'][0]} / {result['halves'][1]}, "
            f"{result['seeds']} seeds.{beside} Accuracy on all of dev: {accuracy}. CPU time per request: {seconds}.",
            "",
            "| method | cost / teacher | at GPU price | gap (pts) | kept | teacher share | oracle savings "
            "| seed 0: rule, gap [95% CI] |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for method, s in result["summary"].items():
            seed0 = result["seed0"][method]
            low, high = seed0["gap_points_95ci"]
            lines.append(
                f"| {method} | {_range(s['cost_ratio'])} | {_range(s['cost_ratio_gpu_price'])} "
                f"| {_range(s['gap_points'], 2)} | {s['promise_kept']}/{result['seeds']} "
                f"| {_range(s['escalation_rate'])} | {_range(s['share_of_oracle_savings'], 2)} "
                f"| {seed0['kept']}, {seed0['gap_points']:.2f} [{low:.2f}, {high:.2f}] |"
            )
        lines += ["", "Targets (medians over seeds):", ""]
        for method in result["summary"]:
            if "point estimate" not in method:
                lines.append(f"- {method}: {_verdicts(result, method)}")
        lines.append("")
    lines += [
        "Curves (evaluation half of seed 0, the rule `cascade calibrate` kept): "
        + ", ".join(f"`cascade-{r['dataset']}-{kind}.png`" for r in results for kind in STUDENTS),
    ]
    (output / "cascade.md").write_text("\n".join(lines) + "\n", encoding="utf-8")

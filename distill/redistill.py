"""``cascade redistill``: a better student from the traffic the teacher labelled, promoted only if it is better.

One run:

1. takes a lock (``<state>/redistill.lock``; a second run at the same time reports "skipped");
2. reads the traffic log written since the last run that trained (``<state>/state.json``);
3. decides whether to train: ``--force``, enough new teacher labels, shadow disagreement over its
   threshold, or the schedule (``--every``) due; otherwise it reports "not needed" and stops;
4. splits the logged texts by a stable hash into training and a held-back slice (never trained on),
   and distils a candidate *from the current student's weights*: the teacher's logged logits are
   the soft targets (and their argmax the hard labels), plus the base training data if named;
5. calibrates the candidate on the held-back slice (teacher labels as the reference) with the same
   kind of rule as the current student (learned stays learned; a chain's student is calibrated as a
   chain again, through the same middle model from the registry), and evaluates candidate and current
   student on it: agreement with the teacher and CPU time per text;
6. promotes (registry add + atomic pointer change) only a candidate at least as good on agreement
   and not more costly (within ``cost_tolerance``); otherwise keeps the current one and says why.

Every run writes ``<state>/reports/redistill-<time>.json`` and ``<state>/redistill.prom`` (Prometheus
text format, for node-exporter's textfile collector), and pushes its metrics to a Pushgateway when
one is named (``distill.redistill_metrics``). The candidate is built in a staged
folder and promotion is the last step, so a run killed midway promotes nothing.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from distill.gate import StudentMeasurement, decide_promotion, triggers
from distill.redistill_metrics import publish, run_metrics
from serving.artifact import MiddleStage
from serving.errors import ArtifactError, CascadeError
from serving.registry import Registry

if TYPE_CHECKING:
    from distill.calibrate import CalibrationReport
    from distill.predictions import Predictions

REPORT_VERSION = 1
MIN_CALIBRATION_TEXTS = 30


@dataclass
class RedistillSettings:
    registry: Path
    traffic_log: Path
    state: Path
    teacher: str | None = None
    """Teacher artifact (default: the registry's current teacher)."""
    base_train: Path | None = None
    min_new_labels: int = 200
    max_disagreement: float = 0.1
    min_shadow: int = 50
    every_s: float | None = None
    force: bool = False
    holdout_share: float = 0.25
    epochs: int = 4
    learning_rate: float = 5e-4
    batch_size: int = 32
    max_length: int = 64
    seed: int = 0
    threads: int | None = None
    max_quality_loss: float = 0.3
    cost_tolerance: float = 0.10
    shuffle_training_labels: bool = False
    """Train on shuffled teacher outputs: a deliberately worse candidate, to check the gate rejects it."""
    shadow_rate: float | None = None
    """The gateway's ``shadow.rate``. With it, the candidate is calibrated on an unbiased sample of
    traffic: the held-back shadowed texts plus escalated ones kept at that rate (the log holds every
    escalated text but only that share of the others). Without it, on the whole held-back slice."""
    pushgateway: str | None = None
    """A Prometheus Pushgateway (``host:port`` or URL) to push the run's metrics to, beside the textfile."""
    reader: Literal["pyarrow", "ray"] = "pyarrow"
    """How the log is read: pyarrow in this process, or Ray Data across the cluster the job runs on."""


Outcome = Literal["promoted", "rejected", "not_needed", "skipped", "not_enough_data", "failed"]
OUTCOMES: tuple[Outcome, ...] = ("promoted", "rejected", "not_needed", "skipped", "not_enough_data", "failed")


class Evaluation(BaseModel):
    """Candidate and current student on the held-back slice, and what the candidate was calibrated on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    holdout_texts: int
    calibration_texts: int
    calibration_sample: Literal["traffic-weighted", "held-back slice"]
    candidate: StudentMeasurement
    current: StudentMeasurement


class RedistillReport(BaseModel):
    """What one run did and why: written to ``<state>/reports/`` and summarised in ``redistill.prom``."""

    model_config = ConfigDict(extra="forbid")

    report_version: int = REPORT_VERSION
    started: float
    ended: float | None = None
    settings: dict[str, Any]
    outcome: Outcome | None = None
    why: str = ""
    current: str | None = None
    log_rows: int = 0
    new_teacher_labels: int = 0
    usable_texts: int = 0
    without_text: int = 0
    shadow_compared: int = 0
    shadow_disagreement: float | None = None
    reasons: list[str] = []
    candidate: str | None = None
    training: dict[str, Any] | None = None
    evaluation: Evaluation | None = None
    report_path: str | None = None


@contextmanager
def _exclusive(path: Path) -> Iterator[bool]:
    """A non-blocking exclusive lock: yields False when another run holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _in_holdout(text: str, share: float) -> bool:
    """Stable across runs and machines: the same text always lands on the same side."""
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:8], 16) % 10_000 < share * 10_000


def _share_of(text: str, salt: str) -> float:
    """A stable number in [0, 1) per text; a different ``salt`` gives an independent one."""
    return int(hashlib.sha256(f"{salt}{text}".encode()).hexdigest()[:8], 16) / 16**8


def calibration_slice(reasons: dict[str, str], shadow_rate: float | None) -> list[str]:
    """The held-back texts to calibrate on: an unbiased sample of traffic when ``shadow_rate`` is known.

    Escalated texts are all logged, the others only at the shadow rate: keeping each escalated one
    with that probability (a stable hash, independent of the holdout's) restores the traffic's mix.
    """
    if shadow_rate is None:
        return list(reasons)
    return [t for t, reason in reasons.items() if reason != "escalation" or _share_of(t, "calibration:") < shadow_rate]


def _load_state(state: Path) -> dict[str, Any]:
    path = state / "state.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"since": None, "last_trained": None}


def _save_state(state: Path, data: dict[str, Any]) -> None:
    path = state / "state.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    os.replace(tmp, path)


def _write_outputs(settings: RedistillSettings, report: RedistillReport) -> RedistillReport:
    reports = settings.state / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(report.started))
    path = reports / f"redistill-{stamp}-{os.getpid()}.json"
    report.report_path = str(path)
    path.write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
    agreement = {}
    if report.evaluation is not None:
        agreement = {"current": report.evaluation.current.agreement, "candidate": report.evaluation.candidate.agreement}
    metrics = run_metrics(
        settings.state,
        outcome=report.outcome or "failed",
        outcomes=OUTCOMES,
        ended=report.ended or time.time(),
        new_teacher_labels=report.new_teacher_labels,
        agreement=agreement,
    )
    try:
        publish(metrics, settings.state, settings.pushgateway)
    except OSError as error:  # a Pushgateway that is down must not fail the run: the textfile is written
        print(f"redistill: could not push metrics to {settings.pushgateway}: {error}", flush=True)
    return report


def run_redistill(settings: RedistillSettings, log: Any = print) -> RedistillReport:
    """One run of the job (see the module docstring); returns its report."""
    settings_json = json.loads(json.dumps(asdict(settings), default=str))
    report = RedistillReport(started=time.time(), settings=settings_json)
    with _exclusive(settings.state / "redistill.lock") as acquired:
        if not acquired:
            report.outcome, report.why, report.ended = "skipped", "another redistill run holds the lock", time.time()
            log(f"redistill: {report.why}")
            return report  # the running one owns the outputs
        try:
            _run_locked(settings, report, log)
        except CascadeError as error:
            report.outcome, report.why = "failed", str(error)
        report.ended = time.time()
        log(f"redistill: {report.outcome}: {report.why}")
        return _write_outputs(settings, report)


def _run_locked(settings: RedistillSettings, report: RedistillReport, log: Any) -> None:
    """Steps 2–6 of the module docstring, filling in ``report`` as they go."""
    from serving.traffic_log import read_traffic_log

    state = _load_state(settings.state)
    registry = Registry(settings.registry)
    current = registry.current("student")
    if current is None:
        raise ArtifactError(f"no student has been promoted in {registry.root}")
    teacher_path = settings.teacher or (str(registry.current_path("teacher") or ""))
    if not teacher_path:
        raise ArtifactError("no teacher: pass --teacher or promote one in the registry")
    if settings.reader == "ray":
        import ray

        if not ray.is_initialized():
            ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=False)  # the job's cluster, or a local one
    table, labels = read_traffic_log(settings.traffic_log, since=state["since"], engine=settings.reader)
    rows = table.to_pylist()
    labelled = [r for r in rows if r["teacher_logits"] is not None]
    usable = [r for r in labelled if r["text"]]
    shadow = [r for r in labelled if r["reason"] == "shadow"]
    disagreement = (
        float(np.mean([r["student_label"] != labels[int(np.argmax(r["teacher_logits"]))] for r in shadow]))
        if shadow
        else None
    )
    report.current = f"{current.name}:{current.version}"
    report.log_rows, report.new_teacher_labels, report.usable_texts = len(rows), len(labelled), len(usable)
    report.without_text, report.shadow_compared = len(labelled) - len(usable), len(shadow)
    report.shadow_disagreement = disagreement
    report.reasons = list(
        triggers(
            force=settings.force,
            new_labels=len(labelled),
            min_new_labels=settings.min_new_labels,
            shadow_disagreement=disagreement,
            shadow_compared=len(shadow),
            min_shadow=settings.min_shadow,
            max_disagreement=settings.max_disagreement,
            every_s=settings.every_s,
            seconds_since_training=None if state["last_trained"] is None else time.time() - state["last_trained"],
        )
    )
    log(f"redistill: {len(rows)} log rows, {len(labelled)} new teacher labels, {len(shadow)} shadow comparisons")
    if not report.reasons:
        report.outcome, report.why = "not_needed", "no trigger: too few new labels, no drift, no schedule due"
        return
    texts = {r["text"]: r["teacher_logits"] for r in usable}  # the latest logits per distinct text
    logged_reason = {r["text"]: r["reason"] for r in usable}
    holdout = {t: z for t, z in texts.items() if _in_holdout(t, settings.holdout_share)}
    training = {t: z for t, z in texts.items() if t not in holdout}
    if len(holdout) < 10 or len(training) < 10:
        report.outcome, report.why = "not_enough_data", f"{len(texts)} distinct texts"
        if report.without_text:
            report.why += (
                f"; {report.without_text} teacher labels were logged without their text: set the gateway's "
                "traffic_log.keep_text to text for escalation, shadow and forced (the default keeps a hash)"
            )
        return
    version = _next_version(registry, current.name)
    work = settings.state / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    holdout_path = work / "holdout.jsonl"
    holdout_path.write_text(
        "".join(json.dumps({"text": t, "label": labels[int(np.argmax(z))]}) + "\n" for t, z in holdout.items()),
        encoding="utf-8",
    )
    candidate_path = work / f"{current.name}-{version}"
    log(f"redistill: training {current.name}:{version} on {len(training)} logged texts, holding back {len(holdout)}")
    report.candidate = f"{current.name}:{version}"
    report.training = _train_candidate(settings, current.path, teacher_path, training, labels, candidate_path, version)
    calibration = set(calibration_slice({t: logged_reason[t] for t in holdout}, settings.shadow_rate))
    calibration_rows = np.asarray([i for i, t in enumerate(holdout) if t in calibration], dtype=np.int64)
    report.evaluation = _evaluate(settings, teacher_path, current.path, candidate_path, holdout_path, calibration_rows)
    decision = decide_promotion(
        report.evaluation.candidate, report.evaluation.current, cost_tolerance=settings.cost_tolerance
    )
    report.outcome, report.why = decision.outcome, decision.why
    if decision.promote:
        entry = registry.add(candidate_path)
        registry.promote("student", entry.name, entry.version, reason=f"redistill: {decision.why}")
    newest = max((r["time"] for r in rows), default=None)
    _save_state(
        settings.state,
        {"since": newest.timestamp() if newest is not None else state["since"], "last_trained": time.time()},
    )
    shutil.rmtree(work, ignore_errors=True)


def _next_version(registry: Registry, name: str) -> str:
    numbers = [int(e.version) for e in registry.entries() if e.name == name and e.version.isdigit()]
    return str(max(numbers, default=0) + 1)


def _train_candidate(
    settings: RedistillSettings,
    current: Path,
    teacher_path: str,
    training: dict[str, list[float]],
    labels: list[str],
    output: Path,
    version: str,
) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from distill.build import BuildOptions, _finish, staged_folder
    from distill.data import read_jsonl
    from distill.training import TrainingData, TrainSettings, predict_logits, seed_everything, tokenize, train
    from serving.architectures import register_architectures
    from serving.artifact import read_manifest
    from serving.model_ref import resolve_model

    if settings.threads:
        torch.set_num_threads(settings.threads)
    register_architectures()
    seed_everything(settings.seed)
    started = time.perf_counter()
    texts = list(training)
    outputs = np.asarray([training[t] for t in texts], dtype=np.float32)
    if settings.shuffle_training_labels:
        outputs = outputs[np.random.default_rng(settings.seed).permutation(len(outputs))]
    logits = torch.tensor(outputs)
    tokenizer = AutoTokenizer.from_pretrained(current)
    if settings.base_train is not None:  # base data: gold labels, and the teacher's logits as soft targets
        base = read_jsonl(settings.base_train, known_labels=labels)
        teacher_ref = resolve_model(teacher_path)
        teacher = AutoModelForSequenceClassification.from_pretrained(teacher_ref.location).eval()
        ids, mask = tokenize(tokenizer, base.texts, settings.max_length)
        logits = torch.cat([logits, predict_logits(teacher, ids, mask)])
        hard = torch.cat([logits[: len(texts)].argmax(dim=1), torch.tensor(base.label_ids(labels))])
        texts += base.texts
    else:
        hard = logits.argmax(dim=1)
    ids, mask = tokenize(tokenizer, texts, settings.max_length)
    data = TrainingData(ids, mask, labels=hard, teacher_logits=logits)
    model = AutoModelForSequenceClassification.from_pretrained(current)
    train_settings = TrainSettings(
        epochs=settings.epochs,
        learning_rate=settings.learning_rate,
        batch_size=settings.batch_size,
        seed=settings.seed,
        patience=settings.epochs,
    )
    result = train(model, data, train_settings, description=f"redistill {version}")
    parent = read_manifest(current)
    manifest = parent.model_copy(
        update={
            "version": version,
            "temperature": 1.0,
            "calibration": None,
            "files": {},
            "training": {
                "redistilled_from": f"{parent.name}:{parent.version}",
                "logged_texts": len(training),
                "base_rows": len(texts) - len(training),
                "settings": vars(train_settings),
                "history": result.history,
                "wall_time_s": round(time.perf_counter() - started, 1),
            },
            "metrics": {},
        }
    )
    options = BuildOptions(name=parent.name, version=version, max_length=settings.max_length, overwrite=True)
    with staged_folder(output, overwrite=True) as staging:
        _finish(staging, model, tokenizer, manifest, texts[:32], options)
    return dict(manifest.training or {})


def _evaluate(
    settings: RedistillSettings,
    teacher_path: str,
    current: Path,
    candidate: Path,
    holdout: Path,
    calibration_rows: np.ndarray,
) -> Evaluation:
    """Measure both students on the held-back slice; calibrate the candidate on ``calibration_rows`` of it."""
    from distill.calibrate import calibrate, write_calibration
    from distill.predictions import predict
    from router.cost import DEFAULT_CPU_NODE_DOLLARS_PER_HOUR
    from serving.model_ref import resolve_model

    teacher = resolve_model(teacher_path)
    price = DEFAULT_CPU_NODE_DOLLARS_PER_HOUR
    previous = resolve_model(str(current)).manifest
    previous_calibration = previous.calibration if previous is not None else None
    # The same kind of rule as the student it would replace: learned stays learned, closed-form stays closed-form.
    learned = previous_calibration is not None and previous_calibration.rule is not None
    rule_confidence = previous_calibration.confidence if previous_calibration is not None else None
    measured: dict[str, StudentMeasurement] = {}
    sample_size, sample_kind = 0, "held-back slice"
    for who, folder in (("candidate", candidate), ("current", current)):
        predictions = predict(teacher, resolve_model(str(folder)), holdout, threads=1, max_length=settings.max_length)
        # Agreement with the teacher's logged answers (the held-back file's labels), not a fresh run.
        assert predictions.gold is not None
        base = {
            "agreement": float(np.mean(predictions.student_logits.argmax(axis=1) == predictions.gold)),
            "cpu_ms_per_text": 1000 * predictions.student_seconds,
            "parameters": _parameters(folder),
        }
        if who == "current":
            measured[who] = StudentMeasurement(**base)
            continue
        # Too small an unbiased sample calibrates worse than the whole (biased) slice: fall back.
        enough = len(calibration_rows) >= MIN_CALIBRATION_TEXTS
        sample = predictions.subset(calibration_rows) if enough else predictions
        sample_size = len(sample.texts)
        sample_kind = "traffic-weighted" if enough and settings.shadow_rate else "held-back slice"
        try:
            if previous_calibration is not None and previous_calibration.middle is not None:
                report = _calibrate_chain(settings, sample, previous_calibration.middle, rule_confidence)
            else:
                report = calibrate(
                    sample,
                    "max_quality_loss",
                    settings.max_quality_loss,
                    student_price=price,
                    teacher_price=price,
                    rule="learned" if learned else "signals",
                    confidence_level=rule_confidence,
                )
        except (ValueError, ArtifactError) as error:
            measured[who] = StudentMeasurement(**base, calibration_error=str(error))
        else:
            write_calibration(candidate, report)
            measured[who] = StudentMeasurement(
                **base,
                calibration={
                    "temperature": report.temperature,
                    "signal": report.signal.value,
                    "threshold": report.threshold,
                    **({"middle": report.calibration.middle.model} if report.calibration.middle else {}),
                },
                expected_escalation_rate=report.calibration.expected_escalation_rate,
            )
    return Evaluation(
        holdout_texts=sum(1 for _ in holdout.open(encoding="utf-8")),
        calibration_texts=sample_size,
        calibration_sample=sample_kind,
        candidate=measured["candidate"],
        current=measured["current"],
    )


def _calibrate_chain(
    settings: RedistillSettings, sample: Predictions, middle: MiddleStage, confidence_level: float | None
) -> CalibrationReport:
    """A chain's student is re-calibrated as a chain, through the same middle model, found in the registry."""
    from distill.chain import StageOutputs, chain_report
    from distill.predictions import model_outputs
    from router.cost import DEFAULT_CPU_NODE_DOLLARS_PER_HOUR
    from serving.model_ref import resolve_model

    name, _, version = middle.model.rpartition(":")
    try:
        entry = Registry(settings.registry).get(name, version)
    except ArtifactError as error:
        raise ArtifactError(f"the chain's middle model {middle.model} is not in the registry: {error}") from None
    logits, seconds = model_outputs(resolve_model(str(entry.path)), sample.texts, max_length=settings.max_length)
    price = DEFAULT_CPU_NODE_DOLLARS_PER_HOUR
    return chain_report(
        sample,
        StageOutputs(middle.model, logits, seconds),
        settings.max_quality_loss,
        student_price=price,
        middle_price=price,
        teacher_price=price,
        confidence_level=confidence_level,
    )


def _parameters(folder: Path) -> int:
    """Parameter count from the weights file's header (no model load)."""
    from safetensors import safe_open

    total = 0
    with safe_open(str(folder / "model.safetensors"), framework="numpy") as weights:
        for name in weights.keys():  # noqa: SIM118 - safe_open is not a mapping
            total += int(np.prod(weights.get_slice(name).get_shape()))
    return total


__all__ = ["RedistillReport", "RedistillSettings", "run_redistill"]

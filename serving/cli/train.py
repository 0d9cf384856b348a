"""``cascade finetune``, ``distill``, ``calibrate``, ``evaluate``: produce models and judge them (``distill``)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from router.cost import DEFAULT_CPU_NODE_DOLLARS_PER_HOUR
from serving.artifact import MiddleStage
from serving.cli.common import add_price_arguments
from serving.constants import DEFAULT_BAG_HIDDEN_SIZE
from serving.constants import DEFAULT_CALIBRATION_CONFIDENCE as DEFAULT_CONFIDENCE
from serving.errors import CascadeError
from serving.vocabulary import ROLES


def _train_settings(args: argparse.Namespace) -> Any:
    from distill.training import TrainSettings

    return TrainSettings(
        epochs=args.epochs,
        learning_rate=args.lr,
        batch_size=args.batch_size,
        temperature=getattr(args, "temperature", 2.0),
        alpha=getattr(args, "alpha", 0.5),
        patience=args.patience,
        seed=args.seed,
    )


def _build_options(args: argparse.Namespace, default_name: str) -> Any:
    from distill.build import BuildOptions

    return BuildOptions(
        name=args.name or default_name,
        version=args.version,
        max_length=args.max_length,
        train=_train_settings(args),
        onnx=not args.no_onnx,
        int8=args.int8,
        overwrite=args.overwrite,
        threads=args.threads,
    )


def _finetune(args: argparse.Namespace) -> int:
    from distill.build import finetune_teacher

    manifest = finetune_teacher(
        args.train, args.output, _build_options(args, "teacher"), base_model=args.base_model, dev_path=args.dev
    )
    print(f"teacher {manifest.name}:{manifest.version} written to {args.output}: {manifest.metrics}")
    _say_what_to_calibrate_on(args.dev)
    return 0


def _say_what_to_calibrate_on(dev: Path | None) -> None:
    """Early stopping chose this model on ``dev``: thresholds chosen there would promise too much."""
    if dev is not None:
        print(
            f"{dev} early-stopped this model: calibrate on a file no training step saw "
            "(cascade split --data <labelled.jsonl> --held <N> --into <dir> keeps one aside)"
        )


def _split(args: argparse.Namespace) -> int:
    from distill.data import split_jsonl

    rest, held = split_jsonl(args.data, args.held, args.seed, args.into)
    print(f"{held}: {args.held} rows held out (seed {args.seed}); {rest}: the rest, to train and early-stop on")
    return 0


def _distill(args: argparse.Namespace) -> int:
    from distill.build import distill_student

    manifest = distill_student(
        args.teacher,
        args.train,
        args.output,
        _build_options(args, "student"),
        shape=args.shape,
        layers=[int(i) for i in args.layers.split(",")],
        width=args.width,
        dev_path=args.dev,
        use_hard_labels=not args.soft_only,
        transfer_path=args.transfer,
        augment=args.augment,
        bag_bigram_buckets=args.bigrams,
        bag_hidden_size=args.bag_hidden,  # None: the architecture's default
    )
    print(f"student {manifest.name}:{manifest.version} written to {args.output}: {manifest.metrics}")
    _say_what_to_calibrate_on(args.dev)
    return 0


def _costs(by_candidate: dict[str, float | None], shown: Callable[[float], str]) -> str:
    """``name cost, …`` for each candidate rule, ``not met`` where it could not reach the target."""
    return ", ".join(f"{name} {'not met' if d is None else shown(d)}" for name, d in by_candidate.items())


def _print_chain(middle: MiddleStage, teacher_only_dollars: float) -> None:
    costs = _costs(middle.compared, lambda dollars: f"{dollars / teacher_only_dollars:.3f}")
    print(f"chains compared (cost at the target, as a share of teacher-only): {costs}")
    shares = ", ".join(f"{role} {share:.3f}" for role, share in zip(ROLES, middle.expected_served_share, strict=True))
    print(f"middle model {middle.model}: rule {middle.kind}, threshold {middle.threshold:.4f}; answered by {shares}")


def _calibrate(args: argparse.Namespace) -> int:
    from distill.calibrate import calibrate_artifacts
    from distill.chain import calibrate_chain_artifacts

    targets = [
        (k, v)
        for k, v in (
            ("max_quality_loss", args.max_quality_loss),
            ("max_escalation", args.max_escalation),
            ("max_cost", args.max_cost),
            ("escalation_share", args.escalation_share),
        )
        if v is not None
    ]
    if len(targets) != 1:
        raise CascadeError(
            "name exactly one target: --max-quality-loss, --max-escalation, --max-cost or --escalation-share"
        )
    ((target, value),) = targets
    if not 0.5 <= args.confidence < 1:
        raise CascadeError(f"--confidence must be at least 0.5 and below 1, got {args.confidence}")
    confidence_level = None if args.point_estimate else args.confidence
    if args.middle is not None:
        if target != "max_quality_loss" or args.rule != "auto":
            raise CascadeError("--middle calibrates a chain for --max-quality-loss, trying every rule (no --rule)")
        report = calibrate_chain_artifacts(
            args.teacher,
            args.student,
            args.middle,
            args.data,
            value,
            write=not args.dry_run,
            threads=args.threads,
            student_price=args.student_price,
            middle_price=args.middle_price,
            teacher_price=args.teacher_price,
            confidence_level=confidence_level,
        )
    else:
        report = calibrate_artifacts(
            args.teacher,
            args.student,
            args.data,
            target,  # type: ignore[arg-type]
            value,
            write=not args.dry_run,
            threads=args.threads,
            student_price=args.student_price,
            teacher_price=args.teacher_price,
            rule=args.rule,
            confidence_level=confidence_level,
        )
    calibration = report.calibration
    expected = report.expected
    chosen = expected.chosen
    low, high = expected.escalation_rate_95ci
    q_low, q_high = expected.quality_95ci
    ece = f" (ECE {report.ece_before:.4f} -> {report.ece_after:.4f})" if report.ece_before is not None else ""
    print(f"temperature {report.temperature:.3f}{ece}")
    if calibration.rule_choice is not None:
        costs = _costs(calibration.rule_choice.dollars_per_1000, lambda dollars: f"${dollars:.5f}")
        print(
            f"rules compared on {calibration.rule_choice.compared_on} calibration texts, learned ones scored out "
            f"of fold (cost per 1,000 at the target): {costs}; kept {calibration.rule_choice.kept}"
        )
    print(f"signal {report.signal.value}, threshold {report.threshold:.4f} for {target} = {value}")
    if calibration.middle is not None:
        _print_chain(calibration.middle, calibration.expected.teacher_only.dollars_per_1000)
    print(f"expected on live traffic ({expected.examples} calibration texts, 95% intervals):")
    print(f"  escalation rate {chosen.escalation_rate:.3f} [{low:.3f}, {high:.3f}]")
    print(f"  {calibration.quality_measure} {chosen.quality:.4f} [{q_low:.4f}, {q_high:.4f}]")
    gap = 100 * (expected.teacher_only.quality - chosen.quality)
    if chosen.quality_loss_bound is not None and calibration.confidence is not None:
        print(
            f"  below the teacher by {gap:.2f} points here; at most {100 * chosen.quality_loss_bound:.2f} points "
            f"with {calibration.confidence:.0%} confidence (one-sided)"
        )
        if report.point_estimate_escalation is not None and report.point_estimate_escalation < chosen.escalation_rate:
            print(
                f"  the bound costs escalation: on the gap measured here alone this rule would escalate "
                f"{report.point_estimate_escalation:.3f}; more calibration texts narrow the bound (4x as many "
                "halve its margin)"
            )
    else:
        print(f"  below the teacher by {gap:.2f} points here (point estimate: holds about half the time on new data)")
    teacher_only = expected.teacher_only
    print(f"  teacher only: {teacher_only.quality:.4f} at ${teacher_only.dollars_per_1000:.5f} per 1,000")
    print(f"  cost ${chosen.dollars_per_1000:.5f} per 1,000")
    share = expected.share_of_oracle_savings
    print(
        f"  share of the oracle's savings {share:.3f}" if share is not None else "  share of the oracle's savings: n/a"
    )
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
    print("written to the student's manifest" if not args.dry_run else "dry run: nothing written")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from distill.evaluate import evaluate_pair, format_table

    if args.curve:
        return _write_curve(args)
    report = evaluate_pair(
        str(args.teacher),
        str(args.student),
        args.data,
        threads=args.threads,
        max_length=args.max_length,
        limit=args.limit,
    )
    print(format_table(report))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
        print(f"written to {args.output}")
    return 0


def _write_curve(args: argparse.Namespace) -> int:
    from distill.calibrate import policy_from, rule_scores
    from distill.curve import curve, plot_curve
    from distill.predictions import cost_model, predict
    from router import CascadePolicy, Signal
    from serving.model_ref import resolve_model

    teacher, student = resolve_model(args.teacher), resolve_model(args.student)
    predictions = predict(teacher, student, args.data, threads=args.threads, max_length=args.max_length)
    calibration = student.manifest.calibration if student.manifest is not None else None
    policy = (
        policy_from(calibration, student.temperature)
        if calibration
        else CascadePolicy(0.0, Signal.MAX_PROB, student.temperature)
    )
    result = curve(
        predictions,
        rule_scores(predictions, policy),
        label=policy.signal.value,
        cost=cost_model(predictions, student_price=args.student_price, teacher_price=args.teacher_price),
        chosen_threshold=calibration.threshold if calibration else None,
    )
    output = args.output or Path("curve.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    plot_curve(result, output.with_suffix(".png"), f"{student.version} vs {teacher.version}")
    if "chosen" in result:
        print(
            f"share of the oracle's savings at the chosen threshold: {result['chosen']['share_of_oracle_savings']:.3f}"
        )
    print(f"written {output} and {output.with_suffix('.png')}")
    return 0


def _add_training_arguments(parser: argparse.ArgumentParser, *, epochs: int, lr: float) -> None:
    parser.add_argument("--train", required=True, type=Path, help="training JSONL ({text, label} per line)")
    parser.add_argument("--dev", type=Path, help="dev JSONL: early stopping and reported accuracy")
    parser.add_argument("--output", required=True, type=Path, help="artifact folder to write")
    parser.add_argument("--name", help="artifact name in its manifest")
    parser.add_argument("--version", default="1", help="artifact version in its manifest (default 1)")
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64, help="tokens per text (default 64)")
    parser.add_argument("--patience", type=int, default=2, help="epochs without dev gain before stopping")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX export")
    parser.add_argument("--int8", action="store_true", help="also write a dynamically quantised int8 ONNX copy")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    split = commands.add_parser(
        "split", help="hold labelled rows out of training: a calibration file that no training step sees"
    )
    split.add_argument("--data", required=True, type=Path, help="labelled JSONL to split")
    split.add_argument("--held", required=True, type=int, help="rows to hold out (drawn at random)")
    split.add_argument("--into", required=True, type=Path, help="folder for <stem>.rest.jsonl and <stem>.held.jsonl")
    split.add_argument("--seed", type=int, default=0)
    split.set_defaults(func=_split)

    finetune = commands.add_parser("finetune", help="fine-tune a pretrained encoder into a teacher artifact")
    finetune.add_argument("--base-model", help="local folder or hub id (default: the packaged all-MiniLM-L6-v2)")
    _add_training_arguments(finetune, epochs=3, lr=1e-4)
    finetune.set_defaults(func=_finetune)

    distill = commands.add_parser("distill", help="distil a student artifact from a teacher artifact")
    distill.add_argument("--teacher", required=True, type=Path, help="teacher artifact folder")
    distill.add_argument(
        "--shape",
        default="teacher_layers",
        choices=["teacher_layers", "bag_of_embeddings"],
        help="teacher_layers: DistilBERT-style subset of the teacher's layers; bag_of_embeddings: the cheapest",
    )
    distill.add_argument("--layers", default="0,5", help="teacher layers the student starts from (default 0,5)")
    distill.add_argument(
        "--width", type=float, default=1.0, help="narrower student: hidden/heads/FFN scaled by this (default 1)"
    )
    distill.add_argument("--temperature", type=float, default=2.0, help="soft-target temperature T")
    distill.add_argument("--alpha", type=float, default=0.5, help="weight of the soft loss against the hard loss")
    distill.add_argument("--soft-only", action="store_true", help="no hard labels: teacher outputs only")
    distill.add_argument(
        "--transfer",
        type=Path,
        help="more texts (JSONL, labels ignored) the student learns from the teacher's answers alone",
    )
    distill.add_argument(
        "--augment",
        type=int,
        default=0,
        metavar="N",
        help="N perturbed copies of each training text (words masked, short n-grams) learnt from the teacher alone",
    )
    distill.add_argument(
        "--bigrams",
        type=int,
        default=0,
        metavar="BUCKETS",
        help="bag_of_embeddings only: also embed adjacent token pairs hashed into BUCKETS (e.g. 100003; 0: off)",
    )
    distill.add_argument(
        "--bag-hidden",
        type=int,
        default=None,
        metavar="WIDTH",
        help=(
            f"bag_of_embeddings only: width of its hidden layer (default {DEFAULT_BAG_HIDDEN_SIZE}; "
            "1024 ranked CLINC150's errors better)"
        ),
    )
    _add_training_arguments(distill, epochs=10, lr=2e-4)
    distill.set_defaults(func=_distill)

    evaluate = commands.add_parser("evaluate", help="accuracy, agreement, size and CPU time of teacher and student")
    evaluate.add_argument("--teacher", required=True, help="teacher artifact (folder or registry:<root>/teacher)")
    evaluate.add_argument("--student", required=True, help="student artifact (folder or registry:<root>/student)")
    evaluate.add_argument("--data", required=True, type=Path, help="labelled JSONL")
    evaluate.add_argument("--output", type=Path, help="write the JSON report here")
    evaluate.add_argument("--threads", type=int, default=1, help="threads per model while timing (default 1)")
    evaluate.add_argument("--max-length", type=int, default=64)
    evaluate.add_argument("--limit", type=int, help="evaluate on the first N rows only")
    evaluate.add_argument("--curve", action="store_true", help="cost–quality curve against the oracle: JSON + PNG")
    add_price_arguments(evaluate)
    evaluate.set_defaults(func=_evaluate)

    calibrate = commands.add_parser("calibrate", help="fit temperature and pick the signal and threshold for a target")
    calibrate.add_argument("--teacher", required=True)
    calibrate.add_argument("--student", required=True, help="its manifest receives the calibration")
    calibrate.add_argument(
        "--data",
        required=True,
        type=Path,
        help="JSONL no training step saw, not the early-stopping --dev (gold labels optional; cascade split)",
    )
    calibrate.add_argument("--max-quality-loss", type=float, help="points of accuracy below the teacher, at least cost")
    calibrate.add_argument("--max-escalation", type=float, help="share of requests sent to the teacher (0-1)")
    calibrate.add_argument("--max-cost", type=float, help="dollars per 1,000 requests")
    calibrate.add_argument(
        "--escalation-share", type=float, help="escalate this share (0-1) of the least confident requests"
    )
    calibrate.add_argument(
        "--rule",
        choices=["auto", "signals", "learned"],
        default="auto",
        help="auto (default): a learned deferral rule only where it beats max_prob/margin/entropy on texts it "
        "was not fitted on; signals: closed-form only; learned: the learned rule",
    )
    calibrate.add_argument(
        "--confidence",
        type=float,
        default=DEFAULT_CONFIDENCE,
        help=f"one-sided confidence that the quality-loss target holds on new traffic (default {DEFAULT_CONFIDENCE})",
    )
    calibrate.add_argument(
        "--point-estimate", action="store_true", help="choose on the measured loss itself (holds about half the time)"
    )
    calibrate.add_argument(
        "--middle",
        help="a chain of three: this model between student and teacher (the gateway's middle section), "
        "all thresholds chosen together",
    )
    calibrate.add_argument(
        "--middle-price", type=float, default=DEFAULT_CPU_NODE_DOLLARS_PER_HOUR, help="middle model node $/hour (CPU)"
    )
    calibrate.add_argument("--threads", type=int, default=1)
    calibrate.add_argument("--output", type=Path, help="also write the full report as JSON")
    calibrate.add_argument("--dry-run", action="store_true", help="print, write nothing into the manifest")
    add_price_arguments(calibrate)
    calibrate.set_defaults(func=_calibrate)

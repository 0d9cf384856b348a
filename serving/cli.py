"""``cascade``: the one front door. Each subcommand is a thin shell over a function tests call directly.

The CLI is the composition root: it is the one module of ``serving`` that reaches into ``distill``
(to build the demo pair and to train), and it does so lazily, inside the subcommands that need it,
so that the serving runtime itself never imports training code.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from serving import constants as c
from serving.config import GatewayConfig, ModelSettings, load_config
from serving.errors import CascadeError

logger = logging.getLogger("cascade")


def demo_config() -> GatewayConfig:
    """The embedded demo pair (built on first use), both roles on this machine's CPU."""
    from distill.demo import ensure_demo_pair

    pair = ensure_demo_pair()
    return GatewayConfig(
        student=ModelSettings(model=str(pair.student)),
        teacher=ModelSettings(model=str(pair.teacher)),
    )


def _wait_until_ready(base_url: str, deadline_s: float) -> None:
    import httpx

    stop_at = time.monotonic() + deadline_s
    last = "no answer"
    while time.monotonic() < stop_at:
        try:
            response = httpx.get(f"{base_url}/readyz", timeout=c.READINESS_PROBE_TIMEOUT_S + 1)
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text[:200]}"
        except httpx.HTTPError as error:
            last = repr(error)
        time.sleep(0.5)
    raise CascadeError(f"the gateway was not ready within {deadline_s:.0f} s (last /readyz: {last})")


def registry_locations(config: GatewayConfig) -> dict[str, str]:
    """The folder each ``registry:`` role points at now (cheap: reads the pointer, hashes nothing)."""
    from serving.registry import REGISTRY_PREFIX, Registry

    locations = {}
    for role in ("student", "teacher"):
        model = getattr(config, role).model
        if model.startswith(REGISTRY_PREFIX):
            location = Path(model.removeprefix(REGISTRY_PREFIX)).expanduser()
            locations[role] = str(Registry(location.parent).current_path(location.name))
    return locations


def follow_registry(config: GatewayConfig, stop: threading.Event, *, app_name: str) -> None:
    """Until ``stop``: poll the registry and redeploy ``app_name`` in place when a pointer moves.

    ``serve.run`` with the same deployments and a new ``user_config`` makes Serve call
    ``reconfigure`` on the running replicas: the new model loads beside the old one and takes over
    only when ready, so a promotion or rollback drops no request. Without ``registry:`` models it
    just waits for ``stop``.
    """
    from ray import serve

    from serving.app import build_app

    deployed = registry_locations(config)
    while not stop.wait(config.reload.poll_s if deployed else None):
        current = registry_locations(config)
        if current != deployed:
            print(f"registry change: {deployed} → {current}; swapping in place", flush=True)
            try:
                serve.run(build_app(config), name=app_name, route_prefix="/", blocking=False)
                deployed = current
            except CascadeError as error:  # e.g. a promoted student with other labels: keep serving
                print(f"not swapped: {error}", file=sys.stderr, flush=True)


def _local_metrics_options(port: int) -> dict[str, Any]:
    """A local Ray's metrics agent on a known port, reporting often enough for a 15 s scrape interval."""
    return {
        "_metrics_export_port": port,
        "_system_config": {"metrics_report_interval_ms": c.METRICS_REPORT_INTERVAL_MS},
    }


def serve_gateway(
    config: GatewayConfig,
    *,
    ray_address: str | None = None,
    startup_timeout_s: float = c.DEFAULT_STARTUP_TIMEOUT_S,
    stop: threading.Event | None = None,
    log_level: str = "WARNING",
    direct_student: bool = False,
) -> None:
    """Start (or join) Ray, deploy the gateway, wait for it to be ready, serve until ``stop`` is set.

    Without ``ray_address`` it starts a private local Ray and ends every process of it on the way
    out; with one it joins that cluster and only deletes its own application when it stops.
    """
    import ray
    from ray import serve
    from ray.serve.config import HTTPOptions
    from ray.serve.schema import LoggingConfig

    from serving.app import build_app, build_direct_student_app

    application = build_app(config)  # resolves and verifies both models before Ray starts
    stop = stop or threading.Event()
    own_ray = ray_address is None
    c.apply_ray_environment_defaults()
    ray.init(
        address=ray_address or "local",
        include_dashboard=False,
        logging_level=getattr(logging, log_level),
        log_to_driver=log_level in ("DEBUG", "INFO"),
        object_store_memory=c.LOCAL_RAY_OBJECT_STORE_BYTES if own_ray else None,
        **(_local_metrics_options(config.metrics.port) if own_ray else {}),
    )
    try:
        serve.start(http_options=HTTPOptions(host=config.http.host, port=config.http.port))
        serve.run(
            application,
            name=c.SERVE_APP_NAME,
            route_prefix="/",
            blocking=False,
            logging_config=LoggingConfig(log_level=log_level, enable_access_log=False),
        )
        if direct_student:
            serve.run(
                build_direct_student_app(config),
                name=c.DIRECT_STUDENT_APP_NAME,
                route_prefix=c.DIRECT_STUDENT_ROUTE,
                blocking=False,
                logging_config=LoggingConfig(log_level=log_level, enable_access_log=False),
            )
        base_url = f"http://{config.http.host}:{config.http.port}"
        _wait_until_ready(base_url, startup_timeout_s)
        print(f"cascade-gateway listening on {base_url}  (docs: {base_url}/docs; Ctrl-C stops)", flush=True)
        if own_ray:
            print(f"metrics for Prometheus: http://{config.http.host}:{config.metrics.port}/metrics", flush=True)
        follow_registry(config, stop, app_name=c.SERVE_APP_NAME)
    finally:
        print("cascade-gateway stopping…", flush=True)
        if own_ray:
            serve.shutdown()
            ray.shutdown()
        else:
            serve.delete(c.SERVE_APP_NAME)
            if direct_student:
                serve.delete(c.DIRECT_STUDENT_APP_NAME)
            ray.shutdown()


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(signum: int, _: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def _cmd_serve(args: argparse.Namespace) -> int:
    config = load_config(args.config) if args.config else demo_config()
    http = config.http.model_copy(update={k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None})
    config = config.model_copy(update={"http": http})
    serve_gateway(
        config,
        ray_address=args.ray_address,
        startup_timeout_s=args.startup_timeout,
        stop=_stop_on_signals(),
        log_level=args.log_level,
        direct_student=args.direct_student,
    )
    return 0


def _cmd_build_demo(args: argparse.Namespace) -> int:
    from distill.demo import ensure_demo_pair

    pair = ensure_demo_pair()
    print(f"teacher: {pair.teacher}\nstudent: {pair.student}")
    return 0


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


def _cmd_finetune(args: argparse.Namespace) -> int:
    from distill.build import finetune_teacher

    manifest = finetune_teacher(
        args.train,
        args.output,
        _build_options(args, "teacher"),
        base_model=args.base_model,
        dev_path=args.dev,
    )
    print(f"teacher {manifest.name}:{manifest.version} written to {args.output}: {manifest.metrics}")
    return 0


def _cmd_distill(args: argparse.Namespace) -> int:
    from distill.build import distill_student

    layers = [int(i) for i in args.layers.split(",")]
    manifest = distill_student(
        args.teacher,
        args.train,
        args.output,
        _build_options(args, "student"),
        shape=args.shape,
        layers=layers,
        width=args.width,
        dev_path=args.dev,
        use_hard_labels=not args.soft_only,
    )
    print(f"student {manifest.name}:{manifest.version} written to {args.output}: {manifest.metrics}")
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from distill.calibrate import calibrate_artifacts

    targets = [
        (k, v)
        for k, v in (
            ("max_quality_loss", args.max_quality_loss),
            ("max_escalation", args.max_escalation),
            ("max_cost", args.max_cost),
        )
        if v is not None
    ]
    if len(targets) != 1:
        raise CascadeError("name exactly one target: --max-quality-loss, --max-escalation or --max-cost")
    ((target, value),) = targets
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
    )
    expected = report["expected"]
    chosen = expected["chosen"]
    low, high = expected["escalation_rate_95ci"]
    q_low, q_high = expected["quality_95ci"]
    print(f"temperature {report['temperature']:.3f} (ECE {report['ece_before']:.4f} -> {report['ece_after']:.4f})")
    print(f"signal {report['signal']}, threshold {chosen['threshold']:.4f} for {target} = {value}")
    print(f"expected on live traffic ({expected['examples']} dev examples, 95% intervals):")
    print(f"  escalation rate {chosen['escalation_rate']:.3f} [{low:.3f}, {high:.3f}]")
    teacher_only = expected["teacher_only"]
    print(f"  {report['quality_measure']} {chosen['quality']:.4f} [{q_low:.4f}, {q_high:.4f}]")
    print(f"  teacher only: {teacher_only['quality']:.4f} at ${teacher_only['dollars_per_1000']:.5f} per 1,000")
    print(f"  cost ${chosen['dollars_per_1000']:.5f} per 1,000")
    print(f"  share of the oracle's savings {expected['share_of_oracle_savings']:.3f}")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print("written to the student's manifest" if not args.dry_run else "dry run: nothing written")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
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
        args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"written to {args.output}")
    return 0


def _write_curve(args: argparse.Namespace) -> int:
    from distill.calibrate import cost_model, curve, plot_curve, predict
    from router import Signal
    from serving.artifact import resolve_model

    teacher, student = resolve_model(args.teacher), resolve_model(args.student)
    predictions = predict(teacher, student, args.data, threads=args.threads, max_length=args.max_length)
    calibration = student.manifest.calibration if student.manifest is not None else {}
    result = curve(
        predictions,
        temperature=student.temperature,
        signal=Signal(calibration.get("signal", "max_prob")),
        cost=cost_model(predictions, student_price=args.student_price, teacher_price=args.teacher_price),
        chosen_threshold=calibration.get("threshold"),
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


def _cmd_models(args: argparse.Namespace) -> int:
    from serving.registry import ROLES, Registry

    registry = Registry(args.registry)
    if args.action == "list":
        current = {role: registry.current(role) for role in ROLES}
        for entry in registry.entries():
            roles = [role for role, e in current.items() if e and (e.name, e.version) == (entry.name, entry.version)]
            marker = f"  <- current {', '.join(roles)}" if roles else ""
            print(
                f"{entry.name}:{entry.version}  {entry.manifest.role}  "
                f"dev accuracy {entry.manifest.metrics.get('dev_accuracy')}{marker}"
            )
    elif args.action == "add":
        entry = registry.add(args.target)
        print(f"added {entry.name}:{entry.version} at {entry.path}")
    elif args.action == "show":
        name, _, version = args.target.partition(":")
        print(registry.get(name, version).manifest.model_dump_json(indent=2))
    elif args.action == "promote":
        name, _, version = args.target.partition(":")
        entry = registry.get(name, version)
        registry.promote(entry.manifest.role, name, version, reason=args.reason)
        print(f"{entry.manifest.role} -> {name}:{version}")
    elif args.action == "rollback":
        entry = registry.rollback(args.target)
        print(f"{args.target} -> {entry.name}:{entry.version}")
    return 0


def _cmd_benchmark_distill(args: argparse.Namespace) -> int:
    from distill.benchmark import PLANS, run_benchmark

    names = args.datasets_only.split(",") if args.datasets_only else list(PLANS)
    command = "cascade " + " ".join(sys.argv[1:])
    run_benchmark(args.datasets, args.work, args.output, names, args.threads, command)
    print(f"results in {args.output}/distill.md")
    return 0


def _cmd_benchmark_cascade(args: argparse.Namespace) -> int:
    from distill.benchmark import PLANS, earlier_results, merge_results, run_cascade_dataset, write_cascade_report

    names = args.datasets_only.split(",") if args.datasets_only else list(PLANS)
    command = "cascade " + " ".join(sys.argv[1:])
    results = earlier_results(args.output, "cascade")
    for name in names:
        results = merge_results(results, run_cascade_dataset(name, args.datasets, args.work, args.output, args.threads))
        write_cascade_report(results, command, args.output)
    print(f"results in {args.output}/cascade.md")
    return 0


def _cmd_benchmark_loop(args: argparse.Namespace) -> int:
    from distill.loop_benchmark import LoopBenchmarkSettings, run_loop_benchmark, write_loop_report

    settings = LoopBenchmarkSettings(
        dataset=args.dataset,
        teacher=args.teacher,
        work=args.work,
        output=args.output,
        held_out=args.held_out,
        seed=args.seed,
        shadow_rate=args.shadow_rate,
        redistill_epochs=args.redistill_epochs,
        redistill_lr=args.redistill_lr,
        threads=args.threads,
    )
    result = run_loop_benchmark(settings)
    _, md = write_loop_report(result, args.output, "cascade " + " ".join(sys.argv[1:]))
    print(md.read_text(encoding="utf-8"))
    return 0


def _cmd_monitoring(args: argparse.Namespace) -> int:
    from serving.monitoring import AlertThresholds, write_monitoring

    thresholds = AlertThresholds(
        agreement_floor=args.agreement_floor,
        escalation_margin=args.escalation_margin,
        cost_per_request_budget_dollars=args.cost_budget,
    )
    for path in write_monitoring(args.out, thresholds):
        print(path)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    import json

    from serving.report import from_metrics_endpoint, from_prometheus, summarise, write_report

    if args.prometheus:
        samples = from_prometheus(args.prometheus, args.window, args.step)
        source = f"Prometheus {args.prometheus}, last {args.window:.0f} s, step {args.step:.0f} s"
    else:
        samples = from_metrics_endpoint(args.metrics_url, args.window, args.step)
        source = f"gateway metrics {args.metrics_url}, {args.window:.0f} s polled every {args.step:.0f} s"
    summary = summarise(samples)
    png, page = write_report(summary, args.out, source)
    print(json.dumps(summary["totals"], indent=2))
    print(f"report: {page} (figure: {png})")
    return 0


def _cmd_loadtest(args: argparse.Namespace) -> int:
    from loadtests.harness import LoadTestSettings, run_loadtest

    settings = LoadTestSettings(
        teacher=args.teacher,
        student=args.student,
        dataset=args.dataset,
        output=args.output,
        p99_target_ms=args.p99_target_ms,
        extra_p99_targets_ms=tuple(args.extra_p99_target_ms),
        start_rate=args.start_rate,
        growth=args.growth,
        max_rate=args.max_rate,
        stage_seconds=args.stage_seconds,
        warmup_seconds=args.warmup_seconds,
        repeats=args.repeats,
        texts_per_request=args.texts_per_request,
        rate_per_user=args.rate_per_user,
        overhead_requests=args.overhead_requests,
        threshold=args.threshold,
        student_price=args.student_price,
        teacher_price=args.teacher_price,
        model_threads=args.model_threads,
        colocate_student=args.colocate_student,
        gateway_cpus=args.gateway_cpus,
        generator_cpus=args.generator_cpus,
    )
    run_loadtest(settings)
    return 0


def _cmd_redistill(args: argparse.Namespace) -> int:
    from distill.redistill import RedistillSettings, run_redistill

    report = run_redistill(
        RedistillSettings(
            registry=args.registry,
            traffic_log=args.traffic_log,
            state=args.state,
            teacher=args.teacher,
            base_train=args.base_train,
            min_new_labels=args.min_new_labels,
            max_disagreement=args.max_disagreement,
            min_shadow=args.min_shadow,
            every_s=args.every,
            force=args.force,
            holdout_share=args.holdout_share,
            epochs=args.epochs,
            learning_rate=args.lr,
            max_quality_loss=args.max_quality_loss,
            cost_tolerance=args.cost_tolerance,
            threads=args.threads,
            shuffle_training_labels=args.shuffle_labels,
            reader=args.reader,
            shadow_rate=args.shadow_rate,
        )
    )
    print(json.dumps({k: report.get(k) for k in ("outcome", "why", "candidate", "report_path")}, indent=2))
    return 1 if report["outcome"] == "failed" else 0


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


def _add_price_arguments(parser: argparse.ArgumentParser) -> None:
    from router.cost import DEFAULT_CPU_NODE_DOLLARS_PER_HOUR, DEFAULT_GPU_NODE_DOLLARS_PER_HOUR

    parser.add_argument(
        "--student-price", type=float, default=DEFAULT_CPU_NODE_DOLLARS_PER_HOUR, help="student node $/hour (CPU)"
    )
    parser.add_argument(
        "--teacher-price", type=float, default=DEFAULT_GPU_NODE_DOLLARS_PER_HOUR, help="teacher node $/hour (GPU)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cascade", description="cascade-gateway: a distilled student, a teacher, one endpoint."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="start the gateway (the embedded demo pair without --config)")
    serve.add_argument("--config", type=Path, help="gateway YAML (see deploy/single-machine.yaml)")
    serve.add_argument("--host", help=f"listen address (default {c.DEFAULT_HOST}, or the config's)")
    serve.add_argument("--port", type=int, help=f"listen port (default {c.DEFAULT_PORT}, or the config's)")
    serve.add_argument("--ray-address", help="join this Ray cluster instead of starting a private local Ray")
    serve.add_argument(
        "--startup-timeout",
        type=float,
        default=c.DEFAULT_STARTUP_TIMEOUT_S,
        help="seconds to wait for readiness",
    )
    serve.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    serve.add_argument(
        "--direct-student",
        action="store_true",
        help=f"also serve the student deployment alone at {c.DIRECT_STUDENT_ROUTE} (load tests: router overhead)",
    )
    serve.set_defaults(func=_cmd_serve)

    demo = commands.add_parser("build-demo", help="build (or find) the embedded demo pair and print where it is")
    demo.set_defaults(func=_cmd_build_demo)

    finetune = commands.add_parser("finetune", help="fine-tune a pretrained encoder into a teacher artifact")
    finetune.add_argument("--base-model", help="local folder or hub id (default: the packaged all-MiniLM-L6-v2)")
    _add_training_arguments(finetune, epochs=3, lr=1e-4)
    finetune.set_defaults(func=_cmd_finetune)

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
    _add_training_arguments(distill, epochs=10, lr=2e-4)
    distill.set_defaults(func=_cmd_distill)

    evaluate = commands.add_parser("evaluate", help="accuracy, agreement, size and CPU time of teacher and student")
    evaluate.add_argument("--teacher", required=True, help="teacher artifact (folder or registry:<root>/teacher)")
    evaluate.add_argument("--student", required=True, help="student artifact (folder or registry:<root>/student)")
    evaluate.add_argument("--data", required=True, type=Path, help="labelled JSONL")
    evaluate.add_argument("--output", type=Path, help="write the JSON report here")
    evaluate.add_argument("--threads", type=int, default=1, help="threads per model while timing (default 1)")
    evaluate.add_argument("--max-length", type=int, default=64)
    evaluate.add_argument("--limit", type=int, help="evaluate on the first N rows only")
    evaluate.add_argument("--curve", action="store_true", help="cost–quality curve against the oracle: JSON + PNG")
    _add_price_arguments(evaluate)
    evaluate.set_defaults(func=_cmd_evaluate)

    calibrate = commands.add_parser("calibrate", help="fit temperature and pick the signal and threshold for a target")
    calibrate.add_argument("--teacher", required=True)
    calibrate.add_argument("--student", required=True, help="its manifest receives the calibration")
    calibrate.add_argument("--data", required=True, type=Path, help="dev JSONL (gold labels optional)")
    calibrate.add_argument("--max-quality-loss", type=float, help="points of accuracy below the teacher, at least cost")
    calibrate.add_argument("--max-escalation", type=float, help="share of requests sent to the teacher (0-1)")
    calibrate.add_argument("--max-cost", type=float, help="dollars per 1,000 requests")
    calibrate.add_argument("--threads", type=int, default=1)
    calibrate.add_argument("--output", type=Path, help="also write the full report as JSON")
    calibrate.add_argument("--dry-run", action="store_true", help="print, write nothing into the manifest")
    _add_price_arguments(calibrate)
    calibrate.set_defaults(func=_cmd_calibrate)

    models = commands.add_parser("models", help="the model registry: list, add, show, promote, rollback")
    models.add_argument("action", choices=["list", "add", "show", "promote", "rollback"])
    models.add_argument(
        "target", nargs="?", default="", help="add: a folder; show/promote: NAME:VERSION; rollback: a role"
    )
    models.add_argument("--registry", required=True, type=Path, help="registry root folder")
    models.add_argument("--reason", default="", help="promote: why, kept in the pointer's history")
    models.set_defaults(func=_cmd_models)

    bench = commands.add_parser("benchmark-distill", help="build and measure teachers and students on real datasets")
    bench.add_argument("--datasets", type=Path, default=Path("../shared/datasets"), help="<name>/{train,dev}.jsonl")
    bench.add_argument("--datasets-only", help="comma-separated subset, e.g. banking77,sst2")
    bench.add_argument("--work", type=Path, default=Path("runs/benchmark"), help="where models are written")
    bench.add_argument("--output", type=Path, default=Path("docs/benchmarks"), help="where distill.{md,json} go")
    bench.add_argument("--threads", type=int, default=1, help="threads per model while timing (default 1)")
    bench.set_defaults(func=_cmd_benchmark_distill)

    cascade_bench = commands.add_parser(
        "benchmark-cascade", help="calibrate the benchmark's students and measure the cascade on held-out dev data"
    )
    cascade_bench.add_argument("--datasets", type=Path, default=Path("../shared/datasets"))
    cascade_bench.add_argument("--datasets-only", help="comma-separated subset, e.g. banking77,sst2")
    cascade_bench.add_argument("--work", type=Path, default=Path("runs/benchmark"), help="benchmark-distill's models")
    cascade_bench.add_argument("--output", type=Path, default=Path("docs/benchmarks"))
    cascade_bench.add_argument("--threads", type=int, default=1)
    cascade_bench.set_defaults(func=_cmd_benchmark_cascade)

    loop_bench = commands.add_parser(
        "benchmark-loop",
        help="the closed loop on a dataset: held-out intents drift in, redistill learns them, the swap under load",
    )
    loop_bench.add_argument("--dataset", type=Path, default=Path("../shared/datasets/banking77"))
    loop_bench.add_argument("--teacher", type=Path, default=Path("runs/benchmark/banking77/teacher"))
    loop_bench.add_argument("--work", type=Path, default=Path("runs/closed-loop/banking77"))
    loop_bench.add_argument("--output", type=Path, default=Path("docs/benchmarks"))
    loop_bench.add_argument("--held-out", type=int, default=8, help="intents held out of the student's training")
    loop_bench.add_argument("--seed", type=int, default=0)
    loop_bench.add_argument("--shadow-rate", type=float, default=0.2)
    loop_bench.add_argument("--redistill-epochs", type=int, default=10)
    loop_bench.add_argument("--redistill-lr", type=float, default=2e-3)
    loop_bench.add_argument("--threads", type=int, default=1)
    loop_bench.set_defaults(func=_cmd_benchmark_loop)

    from serving.monitoring import AlertThresholds

    defaults = AlertThresholds()
    monitoring = commands.add_parser(
        "monitoring", help="write the Prometheus rules and Grafana dashboards (generated, with your thresholds)"
    )
    monitoring.add_argument("--out", type=Path, default=Path("deploy"), help="folder holding prometheus/ and grafana/")
    monitoring.add_argument("--agreement-floor", type=float, default=defaults.agreement_floor)
    monitoring.add_argument(
        "--escalation-margin",
        type=float,
        default=defaults.escalation_margin,
        help="alert above (1 + margin) × the calibrated escalation rate",
    )
    monitoring.add_argument(
        "--cost-budget", type=float, default=defaults.cost_per_request_budget_dollars, help="dollars per request"
    )
    monitoring.set_defaults(func=_cmd_monitoring)

    report = commands.add_parser(
        "report", help="cost per request, savings, escalation and agreement over a window (PNG + HTML)"
    )
    source = report.add_mutually_exclusive_group(required=True)
    source.add_argument("--prometheus", help="Prometheus base URL, e.g. http://127.0.0.1:9090")
    source.add_argument("--metrics-url", help="the gateway's metrics, e.g. http://127.0.0.1:8080/metrics (polled)")
    report.add_argument(
        "--window", type=float, default=3600.0, help="seconds: the last N with --prometheus, or how long to poll"
    )
    report.add_argument("--step", type=float, default=60.0, help="seconds between samples")
    report.add_argument("--out", type=Path, default=Path("cascade-report.html"), help="HTML page (PNG beside it)")
    report.set_defaults(func=_cmd_report)

    from router.cost import DEFAULT_CPU_NODE_DOLLARS_PER_HOUR

    load = commands.add_parser(
        "loadtest", help="teacher only, student only and the cascade under the same load, side by side"
    )
    load.add_argument("--teacher", required=True, help="teacher model folder")
    load.add_argument("--student", required=True, help="student model folder (calibrated: its τ is used)")
    load.add_argument("--dataset", required=True, type=Path, help="traffic JSONL ({text, label})")
    load.add_argument("--output", type=Path, default=Path("docs/benchmarks"), help="loadtest.{json,csv,png,md} go here")
    load.add_argument("--p99-target-ms", type=float, default=300.0)
    load.add_argument(
        "--extra-p99-target-ms",
        type=float,
        action="append",
        default=[],
        help="also read sustained throughput off the same run at this target (repeatable)",
    )
    load.add_argument("--start-rate", type=float, default=10.0, help="first offered rate, req/s")
    load.add_argument("--growth", type=float, default=1.5, help="offered rate × this per stage")
    load.add_argument("--max-rate", type=float, default=3000.0)
    load.add_argument("--stage-seconds", type=float, default=15.0)
    load.add_argument("--warmup-seconds", type=float, default=3.0, help="not counted at the start of each stage")
    load.add_argument("--repeats", type=int, default=3)
    load.add_argument("--texts-per-request", type=int, default=1)
    load.add_argument("--rate-per-user", type=float, default=2.0, help="req/s per Locust user (open loop)")
    load.add_argument("--overhead-requests", type=int, default=300, help="sequential requests per overhead run")
    load.add_argument("--threshold", type=float, help="cascade τ (default: the student's calibrated one)")
    load.add_argument("--student-price", type=float, default=DEFAULT_CPU_NODE_DOLLARS_PER_HOUR)
    load.add_argument(
        "--teacher-price",
        type=float,
        default=DEFAULT_CPU_NODE_DOLLARS_PER_HOUR,
        help="$/h; default the CPU price, as both roles run on this machine's CPU",
    )
    load.add_argument("--model-threads", type=int, default=1)
    load.add_argument("--colocate-student", action="store_true", help="run the student inside the ingress")
    load.add_argument("--gateway-cpus", help="taskset CPU list for the gateway (default: all but the last core)")
    load.add_argument("--generator-cpus", help="taskset CPU list for Locust (default: the last core)")
    load.set_defaults(func=_cmd_loadtest)

    redistill = commands.add_parser(
        "redistill", help="train a student on the teacher-labelled traffic log; promote it only if better"
    )
    redistill.add_argument("--registry", required=True, type=Path, help="the model registry root")
    redistill.add_argument("--traffic-log", required=True, type=Path, help="the gateway's traffic_log.path")
    redistill.add_argument("--state", required=True, type=Path, help="lock, last-run state, reports, metrics")
    redistill.add_argument("--teacher", help="teacher artifact (default: the registry's current teacher)")
    redistill.add_argument("--base-train", type=Path, help="base training JSONL mixed with the logged texts")
    redistill.add_argument(
        "--shadow-rate",
        type=float,
        help="the gateway's shadow.rate: calibrate on a traffic-weighted sample (escalated texts kept at this rate)",
    )
    redistill.add_argument(
        "--reader",
        choices=("pyarrow", "ray"),
        default="pyarrow",
        help="read the traffic log with pyarrow here, or with Ray Data on the job's Ray cluster (RAY_ADDRESS)",
    )
    redistill.add_argument("--min-new-labels", type=int, default=200, help="train when this many arrived")
    redistill.add_argument("--max-disagreement", type=float, default=0.1, help="train when shadow disagreement is over")
    redistill.add_argument("--min-shadow", type=int, default=50, help="shadow comparisons needed to judge drift")
    redistill.add_argument("--every", type=float, help="seconds: train at least this often (schedule)")
    redistill.add_argument("--force", action="store_true", help="train now")
    redistill.add_argument("--holdout-share", type=float, default=0.25, help="logged texts held back for the gate")
    redistill.add_argument("--epochs", type=int, default=4)
    redistill.add_argument("--lr", type=float, default=5e-4)
    redistill.add_argument("--max-quality-loss", type=float, default=0.3, help="calibration target for the candidate")
    redistill.add_argument("--cost-tolerance", type=float, default=0.10, help="allowed CPU-time increase")
    redistill.add_argument("--threads", type=int)
    redistill.add_argument("--shuffle-labels", action="store_true", help="a deliberately worse candidate (gate check)")
    redistill.set_defaults(func=_cmd_redistill)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Quiet third-party chatter (per-file download/load bars, load reports); our own training
    # progress bars stay. Set before transformers is first imported.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CascadeError as error:
        print(f"cascade {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

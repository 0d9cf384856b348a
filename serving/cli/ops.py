"""``cascade redistill``, ``monitoring``, ``report``: run the loop and watch it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from serving.monitoring import AlertThresholds


def _redistill(args: argparse.Namespace) -> int:
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
            pushgateway=args.pushgateway,
        )
    )
    print(json.dumps(report.model_dump(include={"outcome", "why", "candidate", "report_path"}), indent=2))
    return 1 if report.outcome == "failed" else 0


def _monitoring(args: argparse.Namespace) -> int:
    from serving.monitoring import write_monitoring

    thresholds = AlertThresholds(
        agreement_floor=args.agreement_floor,
        escalation_margin=args.escalation_margin,
        cost_per_request_budget_dollars=args.cost_budget,
    )
    for path in write_monitoring(args.out, thresholds):
        print(path)
    return 0


def _report(args: argparse.Namespace) -> int:
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


def _keys_new(args: argparse.Namespace) -> int:
    import secrets

    import yaml
    from pydantic import ValidationError

    from serving.auth import hash_key
    from serving.config import ApiKeySettings
    from serving.errors import ConfigError

    secret = "cg-" + secrets.token_urlsafe(32)
    try:
        entry = ApiKeySettings(
            name=args.name,
            sha256=hash_key(secret),
            requests_per_minute=args.requests_per_minute,
            teacher_texts_per_minute=args.teacher_texts_per_minute,
            allow_teacher_route=args.allow_teacher_route,
        )
    except ValidationError as error:
        problems = "; ".join(f"--{'-'.join(str(e['loc'][0]).split('_'))}: {e['msg']}" for e in error.errors())
        raise ConfigError(f"cannot make that key: {problems}") from None
    print(f"key (give it to the client; it is not stored anywhere): {secret}")
    print("entry for auth.keys in the config, or the keys: list of auth.keys_file:")
    print(yaml.safe_dump([entry.model_dump(exclude_none=True)], sort_keys=False).rstrip())
    return 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = commands.add_parser("keys", help="API keys for the gateway's auth section")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    new = keys_commands.add_parser("new", help="make a key: print the secret once, and its config entry (a hash)")
    new.add_argument("--name", required=True, help="the key's name (metrics label): letters, digits, _ . -")
    new.add_argument("--requests-per-minute", type=float, help="request rate limit (default: none)")
    new.add_argument("--teacher-texts-per-minute", type=float, help="teacher budget in texts a minute (default: none)")
    new.add_argument("--allow-teacher-route", action="store_true", help="may send route: teacher")
    new.set_defaults(func=_keys_new)

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
    redistill.add_argument(
        "--pushgateway",
        help="Prometheus Pushgateway (host:port or URL) to push the run's metrics to, beside the textfile",
    )
    redistill.set_defaults(func=_redistill)

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
    monitoring.set_defaults(func=_monitoring)

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
    report.set_defaults(func=_report)

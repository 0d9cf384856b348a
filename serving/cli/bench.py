"""``cascade benchmark-distill``, ``benchmark-cascade``, ``benchmark-loop``, ``loadtest``: the measurements.

Each imports ``benchmarks`` (and through it Locust and matplotlib, the ``bench`` extra) only when run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from serving.cli.common import add_dataset_selection, add_price_arguments, invocation


def _benchmark_distill(args: argparse.Namespace) -> int:
    from benchmarks.distillation import PLANS, run_benchmark

    names = args.datasets_only.split(",") if args.datasets_only else list(PLANS)
    run_benchmark(args.datasets, args.work, args.output, names, args.threads, invocation())
    print(f"results in {args.output}/distill.md")
    return 0


def _benchmark_cascade(args: argparse.Namespace) -> int:
    from benchmarks.cascade import run_cascade_dataset, write_cascade_report
    from benchmarks.distillation import PLANS, earlier_results, merge_results

    names = args.datasets_only.split(",") if args.datasets_only else list(PLANS)
    # Results of the format before repeated halvings (no "summary") are dropped, not mixed in.
    results = [r for r in earlier_results(args.output, "cascade") if "summary" in r]
    for name in names:
        measured = run_cascade_dataset(name, args.datasets, args.work, args.output, args.threads, args.seeds)
        results = merge_results(results, {**measured, "command": invocation()})
        write_cascade_report(results, invocation(), args.output)
    print(f"results in {args.output}/cascade.md")
    return 0


def _benchmark_loop(args: argparse.Namespace) -> int:
    from benchmarks.loop import LoopBenchmarkSettings, run_loop_benchmark, write_loop_report

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
    _, md = write_loop_report(result, args.output, invocation())
    print(md.read_text(encoding="utf-8"))
    return 0


def _chaos(args: argparse.Namespace) -> int:
    from benchmarks.chaos import ChaosSettings, run_chaos, write_chaos_report

    settings = ChaosSettings(
        dataset=args.dataset,
        output=args.output,
        work=args.work,
        config=args.config,
        auto_rate=args.auto_rate,
        student_rate=args.student_rate,
        phase_s=args.phase_s,
        hang_s=args.hang_s,
        stalled=args.stalled,
        overload_factor=args.overload_factor,
        latency_target_s=args.latency_target_s,
        replicas=args.replicas,
    )
    result = run_chaos(settings)
    _, md = write_chaos_report(result, args.output, invocation())
    print(md.read_text(encoding="utf-8"))
    return 0 if all(v["met"] for v in result["verdicts"].values()) else 1


def _cluster(args: argparse.Namespace) -> int:
    from benchmarks.cluster import ClusterSettings, run_cluster, write_cluster_report
    from serving.cli.serve import demo_config

    student, teacher = args.student, args.teacher
    if student is None or teacher is None:
        demo = demo_config()  # the embedded demo pair (built and cached on first use)
        student, teacher = Path(demo.student.model), Path(demo.teacher.model)
    settings = ClusterSettings(
        student=student,
        teacher=teacher,
        work=args.work,
        counted_requests=args.requests,
        load_seconds=args.load_s,
        kill_after_s=args.kill_after_s,
        users=args.users,
    )
    result = run_cluster(settings)
    _, md = write_cluster_report(result, args.output, invocation())
    print(md.read_text(encoding="utf-8"))
    return (
        0
        if result["placement_ok"] and result["metrics"]["exact"] and result["node_kill"]["succeeded_share"] >= 0.99
        else 1
    )


def _loadtest(args: argparse.Namespace) -> int:
    from benchmarks.loadtest import LoadTestSettings, run_loadtest, run_side_by_side
    from benchmarks.serving_path import ServingPathSettings

    if not args.ramp:
        side = ServingPathSettings(
            teacher=args.teacher,
            student=args.student,
            users=tuple(args.users),
            texts_per_request=tuple(args.texts_per_request_sizes),
            seconds=args.rung_seconds,
            warmup_seconds=args.warmup_seconds,
            min_requests=args.rung_min_requests,
            p99_target_ms=args.p99_target_ms,
            single_requests=args.overhead_requests,
            threshold=args.threshold,
            model_threads=args.model_threads,
            wide_ingress_replicas=args.wide_ingress_replicas,
            servers=tuple(args.servers),
        )
        run_side_by_side(side, args.dataset, args.output)
        return 0

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


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    distill = commands.add_parser("benchmark-distill", help="build and measure teachers and students on real datasets")
    add_dataset_selection(distill, output_help="where distill.{md,json} go")
    distill.set_defaults(func=_benchmark_distill)

    cascade = commands.add_parser(
        "benchmark-cascade", help="calibrate the benchmark's students and measure the cascade on held-out dev data"
    )
    add_dataset_selection(cascade, output_help="where cascade.{md,json} and the curves go")
    cascade.add_argument("--seeds", type=int, default=10, help="random halvings of dev to repeat on (default 10)")
    cascade.set_defaults(func=_benchmark_cascade)

    loop = commands.add_parser(
        "benchmark-loop",
        help="the closed loop on a dataset: held-out intents drift in, redistill learns them, the swap under load",
    )
    loop.add_argument("--dataset", type=Path, default=Path("../shared/datasets/banking77"))
    loop.add_argument("--teacher", type=Path, default=Path("runs/benchmark/banking77/teacher"))
    loop.add_argument("--work", type=Path, default=Path("runs/closed-loop/banking77"))
    loop.add_argument("--output", type=Path, default=Path("docs/benchmarks"))
    loop.add_argument("--held-out", type=int, default=8, help="intents held out of the student's training")
    loop.add_argument("--seed", type=int, default=0)
    loop.add_argument("--shadow-rate", type=float, default=0.2)
    loop.add_argument("--redistill-epochs", type=int, default=10)
    loop.add_argument("--redistill-lr", type=float, default=2e-3)
    loop.add_argument("--threads", type=int, default=1)
    loop.set_defaults(func=_benchmark_loop)

    chaos = commands.add_parser(
        "chaos", help="faults under constant load (kill, hang, stalled sockets, poison, overload): what clients saw"
    )
    chaos.add_argument(
        "--dataset", type=Path, default=Path("distill/demo_data/dev.jsonl"), help="JSONL texts (default: the demo's)"
    )
    chaos.add_argument("--config", type=Path, help="gateway YAML (default: the embedded demo pair)")
    chaos.add_argument("--output", type=Path, default=Path("docs/benchmarks"))
    chaos.add_argument("--work", type=Path, default=Path("runs/chaos"))
    chaos.add_argument("--auto-rate", type=float, default=30.0, help="route: auto requests per second")
    chaos.add_argument("--student-rate", type=float, default=15.0, help="route: student requests per second")
    chaos.add_argument("--phase-s", type=float, default=30.0, help="seconds per phase")
    chaos.add_argument("--hang-s", type=float, default=20.0, help="seconds the teacher stays stopped")
    chaos.add_argument("--stalled", type=int, default=1000, help="stalled connections held open")
    chaos.add_argument("--overload-factor", type=float, default=3.0, help="the overload phase's load, x the base")
    chaos.add_argument(
        "--latency-target-s", type=float, default=1.0, help="p99 the answered requests keep under overload"
    )
    chaos.add_argument("--replicas", type=int, default=1, help="replicas per role for the demo pair (default 1)")
    chaos.set_defaults(func=_chaos)

    cluster = commands.add_parser(
        "benchmark-cluster",
        help="a multi-node Ray cluster on this machine: placement, every node's metrics, a CPU node killed under load",
    )
    cluster.add_argument("--student", type=Path, help="student model folder (default: the embedded demo pair)")
    cluster.add_argument("--teacher", type=Path, help="teacher model folder (default: the embedded demo pair)")
    cluster.add_argument("--output", type=Path, default=Path("docs/benchmarks"))
    cluster.add_argument("--work", type=Path, default=Path("runs/cluster"))
    cluster.add_argument("--requests", type=int, default=300, help="requests counted against Prometheus")
    cluster.add_argument("--load-s", type=float, default=60.0, help="seconds of load around the node kill")
    cluster.add_argument("--kill-after-s", type=float, default=15.0, help="seconds into the load the node dies")
    cluster.add_argument("--users", type=int, default=4, help="closed-loop users during the kill")
    cluster.set_defaults(func=_cluster)

    load = commands.add_parser(
        "loadtest",
        help="the gateway's routes beside a plain server and a no-op Ray Serve app (closed loop); --ramp: "
        "teacher only, student only and the cascade under a climbing open-loop rate, with cost and accuracy",
    )
    load.add_argument("--teacher", required=True, help="teacher model folder")
    load.add_argument("--student", required=True, help="student model folder (calibrated: its τ is used)")
    load.add_argument("--dataset", required=True, type=Path, help="traffic JSONL ({text, label})")
    load.add_argument(
        "--output",
        type=Path,
        default=Path("docs/benchmarks"),
        help="loadtest.{json,md} go here (with --ramp: loadtest-ramp.{json,csv,png,md})",
    )
    load.add_argument("--ramp", action="store_true", help="the open-loop ramp instead of the side-by-side run")
    load.add_argument(
        "--users", type=int, nargs="+", default=[4, 16, 32, 64], help="side by side: concurrent users per rung"
    )
    load.add_argument(
        "--texts-per-request-sizes",
        type=int,
        nargs="+",
        default=[1, 8, 32],
        help="side by side: texts per request to measure",
    )
    load.add_argument("--rung-seconds", type=float, default=10.0, help="side by side: seconds per rung")
    load.add_argument(
        "--rung-min-requests",
        type=int,
        default=200,
        help="side by side: a rung that measured fewer requests runs again for longer (at most 60 s)",
    )
    load.add_argument(
        "--wide-ingress-replicas",
        type=int,
        default=2,
        help="side by side: ingress replicas of gateway_wide (gateway runs one; default 2)",
    )
    load.add_argument(
        "--servers",
        nargs="+",
        default=["plain", "noop_ray", "gateway", "gateway_wide", "gateway_before"],
        choices=["plain", "noop_ray", "gateway", "gateway_wide", "gateway_before"],
        help="side by side: which servers to measure",
    )
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
    add_price_arguments(load, teacher_on_cpu=True)
    load.add_argument("--model-threads", type=int, default=1)
    load.add_argument("--colocate-student", action="store_true", help="run the student inside the ingress")
    load.add_argument("--gateway-cpus", help="taskset CPU list for the gateway (default: all but the last core)")
    load.add_argument("--generator-cpus", help="taskset CPU list for Locust (default: the last core)")
    load.set_defaults(func=_loadtest)

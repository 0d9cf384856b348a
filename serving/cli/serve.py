"""``cascade serve`` and ``cascade build-demo``: run the gateway, on your models or the embedded demo pair."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from typing import Any

from serving import constants as c
from serving.config import GatewayConfig, ModelSettings, load_config


def demo_config() -> GatewayConfig:
    """The embedded demo pair (built on first use), both roles on this machine's CPU."""
    from distill.demo import ensure_demo_pair

    pair = ensure_demo_pair()
    return GatewayConfig(
        student=ModelSettings(model=str(pair.student)),
        teacher=ModelSettings(model=str(pair.teacher)),
    )


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(signum: int, _: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def _serve(args: argparse.Namespace) -> int:
    if args.ray_address is None:
        c.keep_local_ray_on_loopback()  # before Ray is imported: it reads the setting at import
    from serving.lifecycle import serve_gateway

    config = load_config(args.config) if args.config else demo_config()
    http = config.http.model_copy(update={k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None})
    serve_gateway(
        config.model_copy(update={"http": http}),
        ray_address=args.ray_address,
        startup_timeout_s=args.startup_timeout,
        stop=_stop_on_signals(),
        log_level=args.log_level,
        direct_student=args.direct_student,
    )
    return 0


def _build_demo(args: argparse.Namespace) -> int:
    from distill.demo import ensure_demo_pair

    pair = ensure_demo_pair()
    print(f"teacher: {pair.teacher}\nstudent: {pair.student}")
    return 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser("serve", help="serve the gateway (the embedded demo pair without --config)")
    serve.add_argument("--config", type=Path, help="gateway YAML (see deploy/single-machine.yaml)")
    serve.add_argument("--host", help=f"listen address (default {c.DEFAULT_HOST}, or the config's)")
    serve.add_argument("--port", type=int, help=f"listen port (default {c.DEFAULT_PORT}, or the config's)")
    serve.add_argument("--ray-address", help="join this Ray cluster instead of starting a private local Ray")
    serve.add_argument(
        "--startup-timeout", type=float, default=c.DEFAULT_STARTUP_TIMEOUT_S, help="seconds to wait for readiness"
    )
    serve.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    serve.add_argument(
        "--direct-student",
        action="store_true",
        help=f"also serve the student deployment alone at {c.DIRECT_STUDENT_ROUTE} (load tests: router overhead)",
    )
    serve.set_defaults(func=_serve)

    demo = commands.add_parser("build-demo", help="build (or find) the embedded demo pair and print where it is")
    demo.set_defaults(func=_build_demo)

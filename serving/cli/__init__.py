"""``cascade``: the one front door. Each subcommand is a thin shell over a function that tests call directly.

The subcommands live in small modules by concern, each with a ``register(commands)``:

    serve.py   serve, build-demo                        run the gateway (serving.lifecycle)
    models.py  models list|add|show|promote|rollback    the registry (serving.registry)
    train.py   finetune, distill, calibrate, evaluate   produce and judge models (distill)
    ops.py     redistill, monitoring, report            run the loop and watch it
    bench.py   benchmark-*, loadtest                    measurements (benchmarks, loadtests)

This package is the composition root: the one part of ``serving`` that reaches into ``distill``
and ``benchmarks``, lazily, inside the subcommands that need them, so that a serving node never
imports training or measurement code (the import contracts in pyproject.toml say so and are checked).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from serving.cli import bench, models, ops, serve, train
from serving.errors import CascadeError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cascade", description="cascade-gateway: a distilled student, a teacher, one endpoint."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for module in (serve, models, train, ops, bench):
        module.register(commands)
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


__all__ = ["build_parser", "main"]

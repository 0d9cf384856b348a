"""Argument groups that several subcommands share (one definition each, one default each)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from router.cost import DEFAULT_CPU_NODE_DOLLARS_PER_HOUR, DEFAULT_GPU_NODE_DOLLARS_PER_HOUR


def add_price_arguments(parser: argparse.ArgumentParser, *, teacher_on_cpu: bool = False) -> None:
    """``--student-price`` / ``--teacher-price``; ``teacher_on_cpu`` when both roles run on this machine's CPU."""
    parser.add_argument(
        "--student-price", type=float, default=DEFAULT_CPU_NODE_DOLLARS_PER_HOUR, help="student node $/hour (CPU)"
    )
    teacher_default = DEFAULT_CPU_NODE_DOLLARS_PER_HOUR if teacher_on_cpu else DEFAULT_GPU_NODE_DOLLARS_PER_HOUR
    parser.add_argument(
        "--teacher-price",
        type=float,
        default=teacher_default,
        help="teacher node $/hour (default: the CPU price, as both roles run here)"
        if teacher_on_cpu
        else "teacher node $/hour (GPU)",
    )


def add_dataset_selection(parser: argparse.ArgumentParser, *, output_help: str) -> None:
    """Where the shared datasets and the benchmark's models are, and where results go."""
    parser.add_argument("--datasets", type=Path, default=Path("../shared/datasets"), help="<name>/{train,dev}.jsonl")
    parser.add_argument("--datasets-only", help="comma-separated subset, e.g. banking77,sst2")
    parser.add_argument("--work", type=Path, default=Path("runs/benchmark"), help="where models are (or go)")
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks"), help=output_help)
    parser.add_argument("--threads", type=int, default=1, help="threads per model while timing (default 1)")


def invocation() -> str:
    """The command line as the user typed it, for reports that say how to reproduce them."""
    return "cascade " + " ".join(sys.argv[1:])

#!/usr/bin/env bash
# Reproduces, on BANKING77:
#   bash benchmarks/loadtest_banking77.sh         docs/benchmarks/loadtest.{md,json}: the gateway beside a plain
#                                                 server and a no-op Ray Serve app, closed loop (about 20 minutes)
#   bash benchmarks/loadtest_banking77.sh --ramp  docs/benchmarks/loadtest-ramp.{md,json,csv,png}: the open-loop
#                                                 ramp with cost and accuracy (about 25 minutes on 2 cores)
# Needs the teacher and the bag-of-embeddings student of `cascade benchmark-distill` (runs/benchmark).
# Splits dev in halves exactly as `cascade benchmark-cascade` does (numpy permutation, seed 0),
# calibrates a copy of the student on the first half (accuracy at most 0.3 points below the
# teacher, at least cost), and sends the second half, which calibration never saw, as traffic.
# `gateway_wide` runs two ingress replicas (each with the student inside), one per core of the 2-core
# machine the committed figures come from: one ingress replica is one event loop, so one core.
set -euo pipefail
cd "$(dirname "$0")/.."
DATASETS=${DATASETS:-../shared/datasets}
MODELS=${MODELS:-runs/benchmark/banking77}
WORK=${WORK:-runs/loadtest/banking77}
BIN=${BIN:-.venv/bin}
mkdir -p "$WORK"
"$BIN/python" - "$DATASETS/banking77/dev.jsonl" "$WORK" <<'PY'
import sys
from pathlib import Path
import numpy as np
lines = [l for l in Path(sys.argv[1]).read_text(encoding="utf-8").splitlines() if l.strip()]
rows = np.random.default_rng(0).permutation(len(lines))
halves = {"calibration.jsonl": np.sort(rows[: len(rows) // 2]), "traffic.jsonl": np.sort(rows[len(rows) // 2 :])}
for name, picked in halves.items():
    Path(sys.argv[2], name).write_text("".join(lines[i] + "\n" for i in picked), encoding="utf-8")
PY
rm -rf "$WORK/student" && cp -r "$MODELS/student-bag" "$WORK/student"
# Both roles run on this machine's CPU: price both as the CPU node (the one default, router/cost.py).
PRICE=$("$BIN/python" -c 'from router.cost import DEFAULT_CPU_NODE_DOLLARS_PER_HOUR as p; print(p)')
"$BIN/cascade" calibrate --teacher "$MODELS/teacher" --student "$WORK/student" --data "$WORK/calibration.jsonl" \
    --max-quality-loss 0.3 --student-price $PRICE --teacher-price $PRICE --threads 1
if [ "${1:-}" != "--ramp" ]; then
    CASCADE_REPRODUCE="bash benchmarks/loadtest_banking77.sh" "$BIN/cascade" loadtest --teacher "$MODELS/teacher" \
        --student "$WORK/student" --dataset "$WORK/traffic.jsonl" --p99-target-ms 250 --warmup-seconds 2 \
        --output "${OUTPUT:-docs/benchmarks}" "$@"
    exit
fi
shift
CASCADE_REPRODUCE="bash benchmarks/loadtest_banking77.sh --ramp" "$BIN/cascade" loadtest --ramp --teacher "$MODELS/teacher" --student "$WORK/student" --dataset "$WORK/traffic.jsonl" \
    --colocate-student --p99-target-ms 250 --extra-p99-target-ms 500 --start-rate 8 --growth 1.25 --stage-seconds 10 --warmup-seconds 2 \
    --repeats 3 --overhead-requests 300 --output "${OUTPUT:-docs/benchmarks}" "$@"

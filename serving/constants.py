"""Every default of the gateway, in one place, with the environment overrides that are allowed.

Why these numbers: Ray Serve's own default ``max_ongoing_requests=5`` caps a replica at five requests
in flight, which collapses throughput above five concurrent clients (measured on a 2-core machine:
15 req/s at 32 concurrent through one handle hop). Our batched replicas need many requests in flight
to fill a batch, so the defaults below are sized for batching, not for Ray's one-request-at-a-time
default.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Literal

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000

# Request limits, checked before anything is queued.
DEFAULT_MAX_BODY_BYTES = 1_000_000
DEFAULT_MAX_INPUTS = 64
DEFAULT_MAX_TEXT_CHARS = 2_000

# Cascade.
DEFAULT_THRESHOLD = 0.7
DEFAULT_SIGNAL = "max_prob"

# Observability. Ray's metrics agent serves every process's metrics on this port (per node).
DEFAULT_METRICS_PORT = 8080
# How often Ray's processes report metrics to the agent (Ray's own default is 10 s).
METRICS_REPORT_INTERVAL_MS = 2_000
# Shadow sampling: share of student answers also sent to the teacher, and how many at once at most.
DEFAULT_SHADOW_RATE = 0.0
DEFAULT_SHADOW_MAX_IN_FLIGHT = 2
# PSI of live confidence: over the last N student answers, published once N/10 new ones arrived
# and never from fewer than MIN answers.
DEFAULT_DRIFT_WINDOW = 2_000
DEFAULT_DRIFT_MIN_SAMPLES = 200

# Traffic log: seconds between flushes (the most a crash can lose), rows per shard, buffer bound.
DEFAULT_TRAFFIC_LOG_FLUSH_S = 10.0
DEFAULT_TRAFFIC_LOG_ROWS_PER_SHARD = 10_000
DEFAULT_TRAFFIC_LOG_MAX_BUFFERED = 50_000

# What a config opts into for the re-distillation loop: the raw text of what the teacher labelled
# (escalated, shadowed, forced). Without it the traffic log keeps salted hashes only.
KEEP_TEXT_FOR_REDISTILL: dict[Literal["escalation", "shadow", "forced", "sampled"], Literal["text", "hash", "none"]] = {
    "escalation": "text",
    "shadow": "text",
    "forced": "text",
}

# Seconds between looks at the registry for a promoted (or rolled back) model.
DEFAULT_REGISTRY_POLL_S = 5.0
# How long the ingress waits for a role's replicas to serve a promoted model before it switches its own
# view (calibration, versions) anyway: loading and warming a teacher can take this long on a busy node.
SWAP_CATCH_UP_S = 120.0

# Model replicas.
DEFAULT_MAX_LENGTH_TOKENS = 128
DEFAULT_MAX_BATCH_SIZE = 32
DEFAULT_BATCH_WAIT_TIMEOUT_S = 0.0
"""No wait: a batch takes the calls queued while the previous one ran. Under load that fills batches by
itself (the model runs off the event loop meanwhile); a lone request is not held back. A 5 ms wait
cost every single request 5 ms more (measured by hand, one request at a time through the gateway with
the student inside the ingress: p50 11 → 4 ms)."""
EVENT_LOOP_MAX_BATCH_S = 0.005
"""``batching.run_on: auto`` runs a model's batches on the event loop when a full batch, as the warm-up
measured it, takes at most this long (the bag-of-embeddings student: about 2.5 ms for 32 texts; a
two-layer MiniLM student: about 13 ms; the teacher: about 37 ms). Below it, the hop to a worker
thread and back costs the loop more than the loop would spend computing: with 32 users on the
colocated student, 1,118-1,159 requests/s in a thread against 1,175-1,333 on the loop (by hand,
``benchmarks/profile_path``'s setup, 15 s windows, three pairs alternating)."""
EVENT_LOOP_GATHER_S = 0.0001
"""On the event loop, a call waits this long for company when ``batch_wait_timeout_s`` is 0: the model
would otherwise run each call alone before the next request's task got its turn (928 req/s against
1,239 in a worker thread, in one run). Requests whose bytes arrived together join it; a lone request is 0.1 ms later."""
CALLS_IN_FLIGHT_PER_REPLICA = 2
"""Calls one ingress keeps out to a remote role, per replica the role may run: one batch computing and
one waiting on each replica, so no replica idles between batches. Callers beyond that wait and share
the next call (``serving.coalescing``): fewer, fuller calls."""
DEFAULT_MODEL_MAX_ONGOING_REQUESTS = 64
DEFAULT_MODEL_MAX_QUEUED_REQUESTS = 1_024
DEFAULT_THREADS = 1
# Autoscaling: Ray Serve adds replicas as ongoing requests per replica pass this. Ray's default (2)
# would scale out before a dynamic batch could fill; one full batch waiting is the target here.
DEFAULT_TARGET_ONGOING_REQUESTS = DEFAULT_MAX_BATCH_SIZE

# Ingress: async, no model, so it may hold many requests at once.
DEFAULT_INGRESS_MAX_ONGOING_REQUESTS = 256
DEFAULT_INGRESS_MAX_QUEUED_REQUESTS = 2_048

# Resilience: each call to a role is cut at its timeout, a whole request at the request timeout. A
# role's breaker opens after this many failures or timeouts in a row and lets a probe through later.
# Sized for CPU replicas under load on a small node: a student batch takes tens of ms, a teacher's
# hundreds; a call that waits seconds is better answered degraded (or 503) than later.
DEFAULT_STUDENT_TIMEOUT_S = 2.0
DEFAULT_TEACHER_TIMEOUT_S = 5.0
DEFAULT_REQUEST_TIMEOUT_S = 8.0
DEFAULT_BREAKER_FAILURES = 5
DEFAULT_BREAKER_OPEN_S = 2.0
# Ray Serve's replica health checks (its defaults: every 10 s, 30 s timeout). Ray notices a killed
# replica only at its next check, so its period bounds the time to recover; measured with
# `cascade chaos`: 17-23 s from a SIGKILL to answers again with Ray's defaults.
DEFAULT_HEALTH_CHECK_PERIOD_S = 2.0
DEFAULT_HEALTH_CHECK_TIMEOUT_S = 10.0
# How often (at most) the gateway looks at auth.keys_file for a change.
KEYS_FILE_POLL_S = 1.0

# The front proxy (HAProxy, serving/front_proxy.py). A client has 5 s to send a whole request; an idle
# keep-alive connection is closed after 30 s. At most 32 requests go on to Ray at once; the others
# wait up to 0.25 s for a slot, then get a fast 503. Sizing: in flight ≈ throughput × latency target
# (about 70 req/s × 0.5 s on 2 shared cores, measured by `cascade chaos`): more in flight only queues
# inside Ray, where a request cannot be shed any more.
DEFAULT_FRONT_HEADER_TIMEOUT_S = 5.0
DEFAULT_FRONT_IDLE_TIMEOUT_S = 30.0
DEFAULT_FRONT_UPSTREAM_TIMEOUT_S = 30.0
DEFAULT_FRONT_QUEUE_TIMEOUT_S = 0.25
DEFAULT_FRONT_MAX_CONNECTIONS = 4096
DEFAULT_FRONT_MAX_IN_FLIGHT = 32
DEFAULT_FRONT_MAX_HEADER_BYTES = 16_384
DEFAULT_FRONT_THREADS = 1
"""HAProxy's threads (``nbthread``; its own default is one per core). One thread relays tens of thousands
of requests a second, far more than the Python ingress behind it; on 2 shared cores a second thread cost
CPU on every request (by hand, 32 users on route student, with Ray's HAProxy metrics off as well:
0.17 -> 0.13-0.14 ms of HAProxy CPU per request)."""
# On Ctrl-C / SIGTERM: how long the requests already accepted may take to finish (new ones get a 503).
# Above the default request timeout, so that a request in flight is answered, not cut.
DRAIN_TIMEOUT_S = 15.0

# Seconds that `cascade serve` waits for every role to load and answer before giving up.
DEFAULT_STARTUP_TIMEOUT_S = 300.0
# Seconds that /readyz waits for each role to answer.
READINESS_PROBE_TIMEOUT_S = 5.0

# The Ray Serve application name and the object store we ask a local Ray for (small: we pass text
# and logits, never tensors that need shared memory).
SERVE_APP_NAME = "cascade"
# `cascade serve --direct-student`: the student deployment alone, to measure what the router adds.
DIRECT_STUDENT_APP_NAME = "student-direct"
DIRECT_STUDENT_ROUTE = "/direct/student"
LOCAL_RAY_OBJECT_STORE_BYTES = 256 * 1024 * 1024


def cascade_home() -> Path:
    """Where the embedded demo pair is built and cached: ``$CASCADE_HOME`` or ~/.cache/cascade-gateway."""
    value = os.environ.get("CASCADE_HOME")
    return Path(value).expanduser() if value else Path.home() / ".cache" / "cascade-gateway"


# Ray Serve gives its HTTP proxy 5 s to become ready, three times, then kills it and starts over.
# On a small, busy node (2 cores while a model trains) that loop never ends. Set before Ray starts:
# the processes of a local Ray inherit the environment of the driver that started it.
#
# Ray Serve runs replica code on a second event loop in its own thread, and a handle's router on a
# third, by default. Our replicas never block their loop (model calls run in a worker thread), so
# we run both on the replica's main loop, as Ray's own RAY_SERVE_THROUGHPUT_OPTIMIZED mode does:
# measured here, one request through the gateway went from 40 ms to 26 ms (p50, sequential).
#
# HTTP enters through Ray's HAProxy, which sends each request straight to an ingress replica's own
# HTTP server (direct ingress), instead of through Ray's Python proxy and a handle hop: with 32
# closed-loop clients on route student, 164 → 372 requests/s and 11.0 → 4.6 ms of CPU per request over
# all processes (docs/benchmarks/profile.md; 1,063 requests/s with the student inside the ingress).
# ``http.ingress: proxy`` turns it off for a gateway that starts its own Ray. An ingress replica that
# stops keeps answering while every HAProxy learns it is gone: Ray holds it 30 s by default, which
# made every stop and rolling update 20 s longer (the shutdown budget); 5 s covers one broadcast.
#
# The rest of Ray's RAY_SERVE_THROUGHPUT_OPTIMIZED set (request-log buffer of 1000, no stderr logs, GC
# frozen at start, gRPC between handles and replicas) was measured by hand, twice each, alternating,
# 20 s windows on 2 cores, req/s without → with: route student 1,433 / 1,148 → 1,152 / 1,116; auto
# (32 users) 1,072 / 608 → 835 / 762; teacher (16 users) 219 / 191 → 225 / 234. Within this machine's
# noise, except perhaps the teacher's handle calls (gRPC): not adopted until a longer run shows a gain.
#
# Ray's HAProxy writes a log line per request to a socket that Ray's HAProxyManager parses into Ray
# Serve's HTTP metrics (serve_num_http_requests, serve_http_request_latency_ms). The gateway exports
# its own per request (cascade_requests_total, cascade_request_duration_seconds), which the dashboards
# use; the parsing cost 0.08 ms of CPU per request, HAProxy's formatting more (by hand, 32 users on
# route student: 1.12 -> 1.02 ms over all processes, 1,193 -> 1,277 req/s). Off unless you set it.
#
# Ray's HAProxy runs 4 threads unless told otherwise; like the front proxy's (http.front_proxy.threads),
# one relays far more than the ingress replicas behind it answer, and the others cost CPU on every
# request where cores are shared. `python -m benchmarks.alternating ... --variant "four HAProxy
# threads:RAY_SERVE_HAPROXY_NBTHREAD=4" --variant "one HAProxy thread (default)" --pairs 4` (32 users,
# route student, 15 s windows): one thread won all four pairs, median 1,673 against 1,537 req/s, all
# processes' CPU per request 0.76-0.91 against 0.84-0.99 ms (and five of six pairs by hand before).
RAY_ENVIRONMENT_DEFAULTS = {
    "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "30",
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "5",
    "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0",
    "RAY_SERVE_HAPROXY_NBTHREAD": "1",
}

RAY_HAPROXY_SWITCH = "RAY_SERVE_ENABLE_HA_PROXY"


def new_ray_haproxy_folder() -> Path:
    """A short, new folder for one Ray's HAProxy files: Ray puts them in a 56-character node folder
    inside it, and HAProxy refuses a socket path over 97 bytes."""
    return Path(tempfile.mkdtemp(prefix="crh-", dir="/tmp"))


def ray_haproxy_environment(folder: Path, stats_port: int, metrics_port: int) -> dict[str, str]:
    """Where one Ray's HAProxy keeps its files and ports, so several Rays on one machine do not share them.

    Ray's defaults are one fixed folder (/tmp/haproxy-serve) and fixed ports (8404 for its stats page,
    9101 for its metrics): a second gateway or a test session on the same machine would take over the
    first one's admin socket. On a Kubernetes pod, one Ray per pod, the defaults are fine.
    """
    return {
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(folder / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(folder / "admin.sock"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(folder / "metrics.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(folder),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(folder / "server-state"),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(stats_port),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics_port),
    }


LOOPBACK_ONLY_ENVIRONMENT = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
"""A private local Ray on 127.0.0.1 only. Ray binds its processes (GCS, raylet, workers, the metrics
export, the dashboard agent) to the node's address, which it deliberately resolves to a reachable,
non-loopback one. This setting, read by Ray when it is imported (``ray._private.ray_constants``), makes
it take 127.0.0.1, as it does on a laptop: measured with ``ss -ltnp``, nothing of Ray then listens on
another address. Only for a Ray that ``cascade serve`` starts; a cluster's nodes must reach each other."""


def keep_local_ray_on_loopback() -> None:
    """Call before ``import ray`` in a process that will start its own local Ray."""
    for name, value in LOOPBACK_ONLY_ENVIRONMENT.items():
        os.environ.setdefault(name, value)


def apply_ray_environment_defaults() -> None:
    """Set our Ray defaults where the user has not set them already."""
    for name, value in RAY_ENVIRONMENT_DEFAULTS.items():
        os.environ.setdefault(name, value)


DEFAULT_BAG_HIDDEN_SIZE = 256
"""Width of the bag student's hidden layer unless a distillation says otherwise (``cascade distill
--bag-hidden``). Here, not in ``serving.architectures``, so the CLI can name it without importing torch."""

DEFAULT_CALIBRATION_CONFIDENCE = 0.9
"""``cascade calibrate``: one-sided confidence that the quality-loss target holds on new traffic."""

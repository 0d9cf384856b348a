"""``cascade benchmark-cluster``: the gateway on a multi-node Ray cluster, a CPU node killed under load.

On one machine (``benchmarks.ray_cluster``): a head (control plane, Serve's proxy, the router), two
CPU worker nodes that declare ``cpu_node`` (students), and a node that declares a GPU (teachers; it
runs them on its CPU, as no GPU is here). ``cascade serve --ray-address`` joins it. The run checks
placement (teachers on the GPU node only, students on CPU nodes only), sends a known number of
requests and reads back, from a real Prometheus that finds every node's metrics agent through Ray's
service-discovery file, ``sum(ray_cascade_requests_total)``; then kills the raylet of the CPU node
that holds a student under closed-loop load and measures the share of requests answered and the
time until Ray Serve has every student replica running again. Results: ``docs/benchmarks/cluster.{md,json}``.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from benchmarks.prometheus_server import start_prometheus
from benchmarks.ray_cluster import LocalCluster, Node
from serving import constants as c
from serving.ports import free_local_port
from serving.process import ChildProcess, cascade_command, wait_until_ready

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
APP = c.SERVE_APP_NAME
TEXTS = [
    "I lost my card yesterday",
    "what is my balance",
    "how do I transfer money to another account",
    "my card payment was declined",
    "can I change my PIN",
    "hello, is anyone there",
]


@dataclass(frozen=True)
class ClusterSettings:
    student: Path
    teacher: Path
    work: Path
    counted_requests: int = 300
    load_seconds: float = 60.0
    kill_after_s: float = 15.0
    users: int = 4
    student_replicas: int = 2
    startup_timeout_s: float = 600.0


def gateway_config(settings: ClusterSettings, port: int) -> dict[str, Any]:
    def role(model: Path, **deployment: Any) -> dict[str, Any]:
        return {
            "model": str(model),
            "device": "cpu",  # the "GPU" node has no GPU here: the CUDA path is not exercised
            "threads": 1,
            "batching": {"max_batch_size": 16, "batch_wait_timeout_s": 0.005},
            "deployment": {"max_ongoing_requests": 32, "max_queued_requests": 256, **deployment},
        }

    return {
        "http": {"host": "127.0.0.1", "port": port, "proxy_location": "HeadOnly", "front_proxy": {"kind": "none"}},
        "resilience": {"student_timeout_s": 5.0, "teacher_timeout_s": 10.0, "request_timeout_s": 20.0},
        "student": role(
            settings.student, num_replicas=settings.student_replicas, num_cpus=0.5, resources={"cpu_node": 1}
        ),
        "teacher": role(settings.teacher, num_replicas=1, num_cpus=0.5, num_gpus=1),
        # The router on the head, which this run does not kill (its proxy is there too: HeadOnly).
        "ingress": {"num_cpus": 0, "num_replicas": 1, "resources": {"head": 1}},
    }


def start_cluster(work: Path) -> LocalCluster:
    cluster = LocalCluster(work / "cluster")
    cluster.start_head({"head": 10})
    try:
        for name in ("cpu-1", "cpu-2"):
            cluster.add(Node(name, 2, 0, {"cpu_node": 100}))
        cluster.add(Node("gpu", 1, 1, {}))
    except BaseException:
        cluster.stop()
        raise
    return cluster


def cluster_prometheus(cluster: LocalCluster, work: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Prometheus with the shipped cluster config, its file_sd pointed at this cluster's discovery file."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus-ray-cluster.yml").read_text(encoding="utf-8"))
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(DEPLOY / "prometheus" / "rules" / Path(rule).name) for rule in config["rule_files"]]
    config["scrape_configs"][0]["file_sd_configs"][0]["files"] = [str(cluster.service_discovery_file)]
    return start_prometheus(config, work / "prometheus")


def _query(url: str, promql: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=10)
    response.raise_for_status()
    rows: list[dict[str, Any]] = response.json()["data"]["result"]
    return rows


def counted(prometheus: str, expected: int, instances: int = 0, deadline_s: float = 90.0) -> dict[str, Any]:
    """Wait until Prometheus's sum of texts served equals ``expected`` and at least ``instances`` nodes
    report cascade metrics; what it saw, per node too.

    Each node's agent exports on its own schedule and Prometheus scrapes each on its own: the head's
    request counter may arrive before a student node's batch histogram, so both are waited for.
    """
    end = time.monotonic() + deadline_s
    total = -1.0
    reporting: list[dict[str, Any]] = []
    while time.monotonic() < end:
        rows = _query(prometheus, "sum(ray_cascade_requests_total)")
        total = float(rows[0]["value"][1]) if rows else 0.0
        reporting = _query(prometheus, 'count by (instance) ({__name__=~"ray_cascade_.+"})')
        if total == expected and len(reporting) >= instances:
            break
        time.sleep(1)
    targets = _query(prometheus, 'up{job="ray"}')
    per_instance = _query(prometheus, "sum by (instance) (ray_cascade_requests_total)")
    return {
        "expected": expected,
        "summed": total,
        "exact": total == expected,
        "scraped_targets_up": sum(1 for row in targets if row["value"][1] == "1"),
        "scraped_targets": len(targets),
        "instances_reporting_requests": len(per_instance),
        "instances_reporting_cascade_metrics": len(reporting),
    }


class Load:
    """Closed-loop users posting one text each until stopped; every (time, status) is kept."""

    def __init__(self, url: str, users: int) -> None:
        self.url, self.users = url, users
        self.records: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._user, args=(i,), daemon=True) for i in range(users)]

    def _user(self, offset: int) -> None:
        with httpx.Client(timeout=30) as client:
            i = offset
            while not self._stop.is_set():
                try:
                    status = client.post(f"{self.url}/v1/classify", json={"inputs": TEXTS[i % len(TEXTS)]}).status_code
                except httpx.HTTPError:
                    status = 0
                with self._lock:
                    self.records.append((time.time(), status))
                i += self.users

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)


def send(url: str, count: int) -> None:
    with httpx.Client(timeout=60) as client:
        for i in range(count):
            response = client.post(f"{url}/v1/classify", json={"inputs": TEXTS[i % len(TEXTS)]})
            response.raise_for_status()


def run_cluster(settings: ClusterSettings, log: Any = print) -> dict[str, Any]:
    """The whole run (module docstring); every process it started is ended on the way out."""
    settings.work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    cluster = start_cluster(settings.work)
    log(f"cluster of {len(cluster.nodes)} nodes up in {time.monotonic() - started:.1f} s")
    prometheus: subprocess.Popen[bytes] | None = None
    gateway: ChildProcess | None = None
    try:
        port = free_local_port()
        config = settings.work / "gateway.yaml"
        config.write_text(yaml.safe_dump(gateway_config(settings, port)), encoding="utf-8")
        gateway = ChildProcess(
            cascade_command("serve", "--config", str(config), "--ray-address", cluster.address),
            settings.work / "gateway.log",
            env=cluster.env,
        )
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(url, settings.startup_timeout_s, alive=gateway.process, log=gateway.log)
        placement = cluster.replicas(APP)
        log(f"placement: {placement}")
        prometheus, prometheus_url = cluster_prometheus(cluster, settings.work)
        send(url, settings.counted_requests)
        # Every request passes the ingress and a student: those nodes report, whether or not the teacher ran.
        serving_nodes = {*placement.get("gateway", []), *placement.get("student", [])}
        metrics = counted(prometheus_url, settings.counted_requests, instances=len(serving_nodes))
        log(f"metrics: {metrics}")
        victim = next(node for node in placement.get("student", []) if node.startswith("cpu"))
        recovery = _kill_under_load(cluster, settings, url, victim, log)
        return {
            "nodes": {
                name: {"num_cpus": n.num_cpus, "num_gpus": n.num_gpus, "resources": n.resources}
                for name, n in cluster.nodes.items()
            },
            "placement": placement,
            "placement_ok": set(placement.get("teacher", [])) == {"gpu"}
            and set(placement.get("student", [])) <= {"cpu-1", "cpu-2"},
            "metrics": metrics,
            "node_kill": recovery,
            "settings": {
                "counted_requests": settings.counted_requests,
                "load_seconds": settings.load_seconds,
                "kill_after_s": settings.kill_after_s,
                "users": settings.users,
                "student_replicas": settings.student_replicas,
            },
        }
    finally:
        if gateway is not None:
            gateway.stop()
        if prometheus is not None:
            prometheus.kill()
            prometheus.wait()
        cluster.stop()


def _kill_under_load(
    cluster: LocalCluster, settings: ClusterSettings, url: str, victim: str, log: Any
) -> dict[str, Any]:
    with Load(url, settings.users) as load:
        time.sleep(settings.kill_after_s)
        killed_at = time.time()
        pid = cluster.kill_node(victim)
        log(f"killed node {victim} (raylet {pid}) under load")
        recovered_at = None
        end = killed_at + max(settings.load_seconds - settings.kill_after_s, 1.0) + 120
        while time.time() < end:
            try:
                students = cluster.replicas(APP).get("student", [])
            except subprocess.SubprocessError:
                students = []
            if len(students) >= settings.student_replicas and victim not in students:
                recovered_at = time.time()
                break
            time.sleep(1)
        remaining = settings.load_seconds - (time.time() - killed_at + settings.kill_after_s)
        if remaining > 0:
            time.sleep(remaining)
    records = load.records
    statuses = [status for _, status in records]
    after = [status for t, status in records if t >= killed_at]
    failed_after = [t for t, status in records if t >= killed_at and status != 200]
    result = {
        "victim": victim,
        "requests": len(statuses),
        "succeeded_share": sum(1 for s in statuses if s == 200) / max(len(statuses), 1),
        "requests_after_kill": len(after),
        "succeeded_share_after_kill": sum(1 for s in after if s == 200) / max(len(after), 1),
        "failed_statuses": sorted({s for s in statuses if s != 200}),
        "recovery_s": None if recovered_at is None else recovered_at - killed_at,
        "last_failure_after_kill_s": (max(failed_after) - killed_at) if failed_after else None,
        "throughput_rps_median_10s": _median_rate(records),
    }
    log(f"node kill: {result}")
    return result


def _median_rate(records: list[tuple[float, int]]) -> float | None:
    if not records:
        return None
    start = records[0][0]
    buckets: dict[int, int] = {}
    for t, status in records:
        if status == 200:
            buckets[int((t - start) // 10)] = buckets.get(int((t - start) // 10), 0) + 1
    return statistics.median(count / 10 for count in buckets.values()) if buckets else None


def write_cluster_report(result: dict[str, Any], output: Path, command: str) -> tuple[Path, Path]:
    output.mkdir(parents=True, exist_ok=True)
    payload = {"command": command, **result}
    json_path, md_path = output / "cluster.json", output / "cluster.md"
    json_path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    kill, metrics = result["node_kill"], result["metrics"]
    recovery = "not recovered" if kill["recovery_s"] is None else f"{kill['recovery_s']:.1f} s"
    lines = [
        "# The gateway on a multi-node Ray cluster: placement, metrics of every node, a node killed under load",
        "",
        f"Command: `{command}`",
        "",
        "One machine (2 cores): a head (control plane, Serve's proxy and the router), two CPU worker nodes",
        "declaring `cpu_node` (students), and a node declaring one GPU (the teacher, run on the CPU: no GPU",
        "here). Each node is its own raylet started with `ray start`; token authentication on. `cascade serve",
        "--ray-address` joined the cluster.",
        "",
        "| check | result |",
        "| --- | --- |",
        f"| teacher replicas on | {', '.join(result['placement'].get('teacher', []))} |",
        f"| student replicas on | {', '.join(result['placement'].get('student', []))} |",
        f"| placement as configured | {'yes' if result['placement_ok'] else 'NO'} |",
        f"| texts sent / summed by Prometheus over every node | {metrics['expected']} / {metrics['summed']:g} "
        f"({'exact' if metrics['exact'] else 'NOT exact'}) |",
        f"| metrics agents scraped (up / found in Ray's discovery file) | {metrics['scraped_targets_up']} / "
        f"{metrics['scraped_targets']} |",
        f"| metrics agents with cascade_* series (router, students, teacher) | "
        f"{metrics['instances_reporting_cascade_metrics']} |",
        f"| node killed under load (raylet SIGKILL) | {kill['victim']} |",
        f"| requests during the run, answered 200 | {kill['requests']}, {kill['succeeded_share']:.2%} |",
        f"| after the kill, answered 200 | {kill['requests_after_kill']}, {kill['succeeded_share_after_kill']:.2%} |",
        f"| statuses other than 200 | {kill['failed_statuses'] or 'none'} |",
        f"| time until every student replica ran again (elsewhere) | {recovery} |",
        "",
        f"Targets: ≥ 99% of requests succeed: {'met' if kill['succeeded_share'] >= 0.99 else 'NOT met'}; "
        "the time to recover is reported (no target).",
        "",
    ]
    md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return json_path, md_path


__all__ = ["ClusterSettings", "run_cluster", "write_cluster_report"]

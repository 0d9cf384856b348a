"""A real multi-node Ray cluster on one machine: a head and worker nodes, each its own raylet started
with ``ray start``, one of them declaring a GPU. What ``benchmarks/cluster.py`` and the cluster test
run the gateway on.

Every node binds 127.0.0.1 and its own ports; token authentication is on, with one token in every
node's and client's environment (``RAY_AUTH_MODE=token``, ``RAY_AUTH_TOKEN``), as KubeRay sets it. The
head runs Ray's dashboard, which keeps Prometheus's service-discovery file of every node's metrics
agent. ``stop`` ends only this cluster's processes (found by its temp folder), never another Ray on
the machine: ``ray stop`` would end them all.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from serving.constants import RAY_ENVIRONMENT_DEFAULTS, new_ray_haproxy_folder, ray_haproxy_environment
from serving.lifecycle import release_ray_haproxy
from serving.ports import free_local_port

OBJECT_STORE_BYTES = 128 * 1024 * 1024


@dataclass
class Node:
    name: str
    num_cpus: float
    num_gpus: int = 0
    resources: dict[str, float] = field(default_factory=dict)
    node_manager_port: int = 0
    metrics_port: int = 0


def _ray(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "ray"), *args]


class LocalCluster:
    """Start with ``start_head``, then ``add``; ``stop`` ends every process of this cluster."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        # Ray's own folder: short, as its sockets' paths must fit in 107 bytes (a test's tmp path does not).
        self.temp_dir = Path(tempfile.mkdtemp(prefix="cascade-ray-", dir="/tmp"))
        self.haproxy_folder = new_ray_haproxy_folder()
        self.port = free_local_port()
        self.dashboard_port = free_local_port()
        self.nodes: dict[str, Node] = {}
        token = secrets.token_hex(16)
        self.env = {
            **os.environ,
            **RAY_ENVIRONMENT_DEFAULTS,
            # One Ray HAProxy per proxy (HeadOnly here): its files and ports apart from any other Ray.
            **ray_haproxy_environment(self.haproxy_folder, free_local_port(), free_local_port()),
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": token,
            # Several nodes on one machine: Ray refuses a multi-node cluster when this is 0.
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1",
        }

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def service_discovery_file(self) -> Path:
        return self.temp_dir / "prom_metrics_service_discovery.json"

    def _start(self, node: Node, *head_args: str) -> None:
        node.node_manager_port, node.metrics_port = free_local_port(), free_local_port()
        ports = [
            f"--node-manager-port={node.node_manager_port}",
            f"--metrics-export-port={node.metrics_port}",
            f"--dashboard-agent-listen-port={free_local_port()}",
            f"--dashboard-agent-grpc-port={free_local_port()}",
            f"--runtime-env-agent-port={free_local_port()}",
        ]
        command = _ray(
            "start",
            *head_args,
            "--node-ip-address=127.0.0.1",
            f"--num-cpus={node.num_cpus}",
            f"--num-gpus={node.num_gpus}",
            f"--resources={json.dumps({**node.resources, _marker(node.name): 1})}",
            f"--object-store-memory={OBJECT_STORE_BYTES}",
            "--disable-usage-stats",
            *ports,
        )
        log = self.root / f"ray-start-{node.name}.log"
        result = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=180, check=False)
        log.write_text(result.stdout + result.stderr, encoding="utf-8")
        if result.returncode != 0:
            raise RuntimeError(f"ray start for {node.name} failed: {(result.stdout + result.stderr)[-2000:]}")
        self.nodes[node.name] = node

    def start_head(self, resources: dict[str, float]) -> None:
        """The head: control plane, Serve's controller and proxy, the dashboard; no CPU for replicas."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._start(
            Node("head", 0, 0, resources),
            "--head",
            f"--port={self.port}",
            f"--temp-dir={self.temp_dir}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}",
        )

    def add(self, node: Node) -> None:
        self._start(node, f"--address={self.address}")

    def _state(self, kind: str) -> list[dict[str, Any]]:
        """``ray list <kind>`` through the dashboard's state API (as JSON)."""
        command = _ray("list", kind, "--address", self.dashboard, "--format", "json", "--detail", "--limit", "10000")
        result = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=60, check=True)
        rows: list[dict[str, Any]] = json.loads(result.stdout)
        return rows

    def node_names(self) -> dict[str, str]:
        """Ray node id → our node name, for the live nodes (each carries a marker resource of its name)."""
        by_marker = {_marker(name): name for name in self.nodes}
        names = {}
        for row in self._state("nodes"):
            if row["state"] == "ALIVE":
                found = [by_marker[key] for key in row.get("resources_total", {}) if key in by_marker]
                names[row["node_id"]] = found[0] if found else "?"
        return names

    def replicas(self, app: str) -> dict[str, list[str]]:
        """Deployment name → the node (our name) of each live replica of ``app``."""
        names = self.node_names()
        placed: dict[str, list[str]] = {}
        for actor in self._state("actors"):
            prefix = f"ServeReplica:{app}:"
            if actor["state"] == "ALIVE" and actor["class_name"].startswith(prefix):
                deployment = actor["class_name"].removeprefix(prefix)
                placed.setdefault(deployment, []).append(names.get(actor["node_id"], "?"))
        return placed

    def raylet_pid(self, name: str) -> int:
        port = self.nodes[name].node_manager_port
        for pid, command in _processes():
            if "raylet" in command and f"--node_manager_port={port}" in command:
                return pid
        raise LookupError(f"no raylet for node {name} (node-manager port {port})")

    def kill_node(self, name: str) -> int:
        """SIGKILL the node's raylet and every process it started (agents, workers, replicas), as a node that dies.

        The raylet alone is not enough: its dashboard and runtime-env agents, which rename themselves
        (so ``stop`` cannot find them by the cluster's folder), outlived it on a loaded machine.
        """
        pid = self.raylet_pid(name)
        _kill_with_descendants({pid})
        return pid

    def stop(self) -> None:
        """End every process of this cluster (its temp folder is in their command lines) and what they
        started, then the folder."""
        marker = str(self.temp_dir)
        for _ in range(5):
            mine = {pid for pid, command in _processes() if marker in command and pid != os.getpid()}
            if not mine:
                break
            _kill_with_descendants(mine)  # Ray's agents rename themselves, losing the marker
            time.sleep(1)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        release_ray_haproxy(self.haproxy_folder)


def _marker(name: str) -> str:
    """A custom resource (1 unit) that names a node, so that Ray's node list can be read back by name."""
    return "cluster_node_" + "".join(ch if ch.isalnum() else "_" for ch in name)


def _kill_with_descendants(pids: set[int]) -> None:
    """SIGKILL these processes and every process they started."""
    family = set(pids)
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            family.update(child.pid for child in psutil.Process(pid).children(recursive=True))
    for pid in family:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _processes() -> list[tuple[int, str]]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                found.append((int(entry.name), (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()))
    return found


__all__ = ["LocalCluster", "Node"]

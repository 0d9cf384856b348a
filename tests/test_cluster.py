"""The gateway on a real multi-node Ray cluster on this machine (several raylets, one declaring a GPU):
placement per role, every node's metrics through a real Prometheus, a CPU node killed under load."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from benchmarks.cluster import ClusterSettings, run_cluster
from tests.builders import TinyPair

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus not installed (.ci/run installs it)"),
]


def test_roles_land_where_configured_metrics_add_up_and_a_dead_cpu_node_is_replaced(
    tiny_pair: TinyPair, tmp_path: Path
) -> None:
    settings = ClusterSettings(
        tiny_pair.student, tiny_pair.teacher, tmp_path, counted_requests=40, load_seconds=30, kill_after_s=6
    )
    result = run_cluster(settings, log=lambda _: None)
    placement = result["placement"]
    assert placement["teacher"] == ["gpu"]  # the only node that declares a GPU
    assert sorted(placement["student"]) == ["cpu-1", "cpu-2"]  # the nodes that declare cpu_node
    assert placement["gateway"] == ["head"]
    metrics = result["metrics"]
    assert metrics["exact"], metrics  # Prometheus's sum over every node = the texts sent
    assert metrics["scraped_targets_up"] == metrics["scraped_targets"] >= 4  # every node's agent, via file_sd
    # The head (router) and both student nodes; the teacher's node too once it has run a batch.
    assert metrics["instances_reporting_cascade_metrics"] >= 3
    kill = result["node_kill"]
    assert kill["succeeded_share"] >= 0.99, kill
    assert kill["recovery_s"] is not None, "the student on the dead node was never replaced"

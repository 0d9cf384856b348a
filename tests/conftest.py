"""Shared fixtures: tiny real models built in seconds, and one local Ray per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from serving.ports import free_local_port
from tests.builders import TinyPair, build_tiny_pair


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory: pytest.TempPathFactory) -> TinyPair:
    """A 2-layer teacher (torch backend) and a 1-layer student with model.onnx, both width 32."""
    return build_tiny_pair(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def ray_session() -> Iterator[int]:
    """One local Ray for the whole test session (yields its metrics port); Serve and Ray end with it.

    Set up as ``cascade serve`` sets up its own: HTTP through Ray's HAProxy (direct ingress), with
    that HAProxy's files and ports apart from any gateway the tests start beside it.
    """
    import ray
    from ray import serve

    from serving.constants import apply_ray_environment_defaults
    from serving.lifecycle import choose_ingress, release_ray_haproxy

    apply_ray_environment_defaults()
    haproxy_folder = choose_ingress("haproxy")
    metrics_port = free_local_port()
    ray.init(
        address="local",
        num_cpus=4,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=128 * 1024 * 1024,
        _metrics_export_port=metrics_port,
        _system_config={"metrics_report_interval_ms": 1000},
    )
    try:
        yield metrics_port
    finally:
        serve.shutdown()
        ray.shutdown()
        if haproxy_folder is not None:
            release_ray_haproxy(haproxy_folder)


@pytest.fixture(scope="session")
def serve_port(ray_session: int) -> int:
    """Ray Serve's HTTP proxy on the session Ray; its port is fixed by the first ``serve.start``."""
    from ray import serve

    port = free_local_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return port


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that needs the session's Ray is slow by definition, so `make test-fast` never starts Ray."""
    for item in items:
        if {"ray_session", "serve_port"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)

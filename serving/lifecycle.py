"""The gateway's process lifecycle: start (or join) Ray, deploy, wait until ready, serve, stop cleanly.

``serve_gateway`` is what ``cascade serve`` runs. Without a Ray address it starts a private local
Ray and ends every process of it on the way out; with one it joins that cluster and deletes only its
own applications when it stops. While it serves, ``serving.swap.follow_registry`` watches the registry.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from serving import constants as c
from serving.config import GatewayConfig
from serving.process import wait_until_ready
from serving.swap import follow_registry

_RAY_TOKEN_LOGGER = "ray._private.authentication.authentication_token_setup"


def _drop_token_auth_notice(record: logging.LogRecord) -> bool:
    return "Token authentication is enabled" not in record.getMessage()


def _local_metrics_options(port: int) -> dict[str, Any]:
    """A local Ray's metrics agent on a known port, reporting often enough for a 15 s scrape interval."""
    return {
        "_metrics_export_port": port,
        "_system_config": {"metrics_report_interval_ms": c.METRICS_REPORT_INTERVAL_MS},
    }


def serve_gateway(
    config: GatewayConfig,
    *,
    ray_address: str | None = None,
    startup_timeout_s: float = c.DEFAULT_STARTUP_TIMEOUT_S,
    stop: threading.Event | None = None,
    log_level: str = "WARNING",
    direct_student: bool = False,
) -> None:
    """Start (or join) Ray, deploy the gateway, wait for it to be ready, serve until ``stop`` is set."""
    import ray
    from ray import serve
    from ray.serve.config import HTTPOptions
    from ray.serve.schema import LoggingConfig

    from serving.application import build_app, build_direct_student_app

    application = build_app(config)  # resolves and verifies both models before Ray starts
    stop = stop or threading.Event()
    own_ray = ray_address is None
    c.apply_ray_environment_defaults()
    quiet = log_level not in ("DEBUG", "INFO")
    if own_ray and quiet:
        # Ray 2.60 turns token authentication on for a new local cluster and warns that it did, on
        # every start. It is what we want (only holders of ~/.ray/auth_token reach this Ray), so say
        # it once, plainly, instead. (Setting RAY_AUTH_MODE=token explicitly would silence it, but
        # then Ray 2.60's local start rejects its own driver: measured here.)
        logging.getLogger(_RAY_TOKEN_LOGGER).addFilter(_drop_token_auth_notice)
    if quiet:
        # Serve's own start-up lines ("Connecting to existing Serve app … will not be applied" is
        # printed on every fresh start and is harmless); we print the one line that matters below.
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
    ray.init(
        address=ray_address or "local",
        include_dashboard=False,
        logging_level=getattr(logging, log_level),
        log_to_driver=log_level in ("DEBUG", "INFO"),
        object_store_memory=c.LOCAL_RAY_OBJECT_STORE_BYTES if own_ray else None,
        **(_local_metrics_options(config.metrics.port) if own_ray else {}),
    )
    logging_config = LoggingConfig(log_level=log_level, enable_access_log=False)
    try:
        serve.start(http_options=HTTPOptions(host=config.http.host, port=config.http.port))
        serve.run(application, name=c.SERVE_APP_NAME, route_prefix="/", blocking=False, logging_config=logging_config)
        if direct_student:
            serve.run(
                build_direct_student_app(config),
                name=c.DIRECT_STUDENT_APP_NAME,
                route_prefix=c.DIRECT_STUDENT_ROUTE,
                blocking=False,
                logging_config=logging_config,
            )
        base_url = f"http://{config.http.host}:{config.http.port}"
        wait_until_ready(base_url, startup_timeout_s)
        if own_ray:
            print("Ray: a private local cluster with token authentication (token in ~/.ray/auth_token)", flush=True)
        print(f"cascade-gateway listening on {base_url}  (docs: {base_url}/docs; Ctrl-C stops)", flush=True)
        if own_ray:
            print(f"metrics for Prometheus: http://{config.http.host}:{config.metrics.port}/metrics", flush=True)
        follow_registry(config, stop, app_name=c.SERVE_APP_NAME)
    finally:
        print("cascade-gateway stopping…", flush=True)
        # Deleting our applications shuts their replicas down gracefully (the traffic log flushes).
        # A private Ray then ends with everything in it; serve.shutdown() is not called, as it makes
        # the raylet print a retried "graceful_shutdown failed" task for a controller it just killed.
        serve.delete(c.SERVE_APP_NAME)
        if direct_student:
            serve.delete(c.DIRECT_STUDENT_APP_NAME)
        ray.shutdown()
        print("cascade-gateway stopped", flush=True)


__all__ = ["serve_gateway"]

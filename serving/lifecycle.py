"""The gateway's process lifecycle: start (or join) Ray, deploy, wait until ready, serve, stop cleanly.

``serve_gateway`` is what ``cascade serve`` runs. Without a Ray address it starts a private local
Ray and ends every process of it on the way out; with one it joins that cluster and deletes only its
own applications when it stops. A promotion in the registry is followed by the application itself
(``serving.swap``), so nothing here watches it.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

from serving import constants as c
from serving.auth import exposure_notice
from serving.config import GatewayConfig
from serving.errors import ConfigError
from serving.front_proxy import HAProxy, wanted
from serving.ports import free_local_port
from serving.process import wait_until_ready

_RAY_TOKEN_LOGGER = "ray._private.authentication.authentication_token_setup"


def _drop_token_auth_notice(record: logging.LogRecord) -> bool:
    return "Token authentication is enabled" not in record.getMessage()


def _local_metrics_options(port: int) -> dict[str, Any]:
    """A local Ray's metrics agent on a known port, reporting often enough for a 15 s scrape interval."""
    return {
        "_metrics_export_port": port,
        "_system_config": {"metrics_report_interval_ms": c.METRICS_REPORT_INTERVAL_MS},
    }


def _check_port_free(port: int, setting: str) -> None:
    """Fail with the setting's name, not Ray's "node timed out during startup", when a port is taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise ConfigError(
                f"{setting} {port} is in use (another cascade serve or Ray on this machine?): "
                f"stop it, or set {setting} to a free port"
            ) from None


def choose_ingress(ingress: str) -> Path | None:
    """Set how HTTP enters the private Ray about to start; returns the folder of Ray's HAProxy, if used.

    Set in this process's environment before ``ray.init``: the local Ray's processes inherit it. Also
    used by the test session's Ray and the no-op Ray Serve app of ``cascade loadtest``; remove the
    folder once that Ray has stopped.
    """
    if ingress != "haproxy":
        os.environ[c.RAY_HAPROXY_SWITCH] = "0"
        return None
    os.environ[c.RAY_HAPROXY_SWITCH] = "1"
    folder = c.new_ray_haproxy_folder()
    os.environ.update(c.ray_haproxy_environment(folder, free_local_port(), free_local_port()))
    return folder


def release_ray_haproxy(folder: Path, *, timeout_s: float = 5.0) -> list[int]:
    """End any HAProxy still running on ``folder``'s config once its Ray has stopped; remove the folder.

    Ray starts its HAProxy as ``haproxy -db -f <folder>/<node id>/haproxy.cfg`` and, on a reload, a
    new one that takes over from the old (``-sf``). A takeover signal that is lost, or a Ray that stops
    while a reload is under way, leaves an HAProxy behind with no parent (seen after one CI run in two,
    a reload's new process). Returns the process ids it had to end.
    """
    inside = f"{folder}/".encode()
    leftovers = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            arguments = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # ended meanwhile, or not ours to read
            continue
        configs = [path for flag, path in itertools.pairwise(arguments) if flag == b"-f"]
        if arguments[0].endswith(b"haproxy") and any(c.startswith(inside) and c.endswith(b".cfg") for c in configs):
            leftovers.append(int(entry.name))
    for signal_number, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, timeout_s)):
        alive = [pid for pid in leftovers if _signal(pid, signal_number)]
        deadline = time.monotonic() + wait_s
        while alive and time.monotonic() < deadline:
            time.sleep(0.05)
            alive = [pid for pid in alive if Path(f"/proc/{pid}").exists() and not _is_zombie(pid)]
        if not alive:
            break
    shutil.rmtree(folder, ignore_errors=True)
    return leftovers


def _signal(pid: int, signal_number: int) -> bool:
    try:
        os.kill(pid, signal_number)
    except ProcessLookupError:
        return False
    return True


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


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

    notice = exposure_notice(config.auth, config.http.host)  # refuses an open non-loopback address
    application = build_app(config)  # resolves and verifies both models before Ray starts
    stop = stop or threading.Event()
    own_ray = ray_address is None
    # On one machine HAProxy takes the public address and Ray Serve's proxy listens behind it on
    # loopback. Joining a cluster, Serve's proxies are the cluster's (see deploy/kuberay/).
    front, front_notice = wanted(config.http.front_proxy) if own_ray else (False, None)
    if own_ray:
        _check_port_free(config.metrics.port, "metrics.port")
    serve_host, serve_port = ("127.0.0.1", free_local_port()) if front else (config.http.host, config.http.port)
    c.apply_ray_environment_defaults()
    haproxy_folder = choose_ingress(config.http.ingress) if own_ray else None
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
    own_ray_options = (
        {
            "include_dashboard": False,
            "object_store_memory": c.LOCAL_RAY_OBJECT_STORE_BYTES,
            **_local_metrics_options(config.metrics.port),
        }
        if own_ray
        else {}  # a cluster's node settings are its own (`ray start`): Ray refuses them from a driver
    )
    ray.init(
        address=ray_address or "local",
        logging_level=getattr(logging, log_level),
        log_to_driver=log_level in ("DEBUG", "INFO"),
        **own_ray_options,
    )
    logging_config = LoggingConfig(log_level=log_level, enable_access_log=False)
    proxy: HAProxy | None = None
    try:
        serve.start(
            http_options=HTTPOptions(host=serve_host, port=serve_port), proxy_location=config.http.proxy_location
        )
        serve.run(application, name=c.SERVE_APP_NAME, route_prefix="/", blocking=False, logging_config=logging_config)
        if direct_student:
            serve.run(
                build_direct_student_app(config),
                name=c.DIRECT_STUDENT_APP_NAME,
                route_prefix=c.DIRECT_STUDENT_ROUTE,
                blocking=False,
                logging_config=logging_config,
            )
        if front:
            proxy = HAProxy(
                config.http.front_proxy,
                listen_host=config.http.host,
                listen_port=config.http.port,
                serve_port=serve_port,
            )
        base_url = f"http://{config.http.host}:{config.http.port}"
        wait_until_ready(base_url, startup_timeout_s, stop=stop)
        if own_ray:
            print("Ray: a private local cluster with token authentication (token in ~/.ray/auth_token)", flush=True)
        print(f"cascade-gateway listening on {base_url}  (docs: {base_url}/docs; Ctrl-C stops)", flush=True)
        if proxy is not None:
            print("front proxy: HAProxy (timeouts, connection limit, bounded queue; README, Security)", flush=True)
        for warning in (notice, front_notice):
            if warning:
                print(f"warning: {warning}", flush=True)
        if own_ray:
            print(f"metrics for Prometheus: http://127.0.0.1:{config.metrics.port}/metrics", flush=True)
        stop.wait()  # the application follows the registry by itself (serving.swap)
    finally:
        print("cascade-gateway stopping…", flush=True)
        if proxy is not None:
            try:
                # Drain: new requests get 503 "draining" with Retry-After; the accepted ones finish.
                left = proxy.drain(c.DRAIN_TIMEOUT_S)
                print(
                    "drained: every accepted request answered"
                    if not left
                    else f"drain timed out after {c.DRAIN_TIMEOUT_S:g} s with {left} requests in flight",
                    flush=True,
                )
            except OSError as error:  # stopped before HAProxy was up: nothing was accepted to drain
                print(f"no drain: the front proxy's admin socket is not there ({error.strerror})", flush=True)
            finally:
                proxy.stop()
        # Deleting our applications shuts their replicas down gracefully (the traffic log flushes).
        # A private Ray then ends with everything in it; serve.shutdown() is not called, as it makes
        # the raylet print a retried "graceful_shutdown failed" task for a controller it just killed.
        serve.delete(c.SERVE_APP_NAME)
        if direct_student:
            serve.delete(c.DIRECT_STUDENT_APP_NAME)
        ray.shutdown()
        if haproxy_folder is not None:
            release_ray_haproxy(haproxy_folder)
        print("cascade-gateway stopped", flush=True)


__all__ = ["choose_ingress", "release_ray_haproxy", "serve_gateway"]

"""HAProxy in front of Ray Serve's proxy: slow clients, connection limits, a bounded queue, one error shape.

Why: Ray Serve's HTTP proxy (uvicorn) has no header or body timeout and no connection limit, so 257
connections that stop mid-body held every ingress slot and starved everyone (issue 14). It also answers
some failures itself in plain text (malformed HTTP, its own queue limit), and a non-UTF-8
``X-Request-Id`` fails inside it before our code runs. HAProxy (Debian's ``haproxy``) fixes all of it
from outside, without patching Ray:

    client ─▶ HAProxy on http.host:http.port ─▶ Ray Serve proxy on 127.0.0.1:<free port> ─▶ ingress
              ├ whole request (headers and body) within header_timeout_s, else 408
              ├ at most max_connections clients, at most max_in_flight requests passed on to Ray;
              │ the rest wait up to queue_timeout_s, then a fast 503 with Retry-After
              ├ X-Request-Id kept only if short and plain, otherwise a fresh one
              ├ Ray told not to watch each request for a hang-up (``DISCONNECT_WATCH_OFF``)
              ├ /healthz answered here from a health check of Ray's proxy every second: never queued
              ├ draining (Ctrl-C / SIGTERM): new requests get 503 ``draining``, accepted ones finish
              └ every response it makes itself in the gateway's JSON error shape

``render_config`` is pure (tested without HAProxy); ``HAProxy`` runs it as a child of ``cascade serve``.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from serving.config import FrontProxySettings
from serving.errors import ConfigError

DRAIN_MINIMUM_S = 1.0
LISTENER_CLOSE_S = 2.0
"""After a drain, how long the connections already accepted have to get their answer (a client that
connected and sent nothing holds its connection until this, not until its header timeout)."""
REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
"""The same rule as ``serving.ingress.safe_request_id``: what the gateway keeps of a client's id."""
DISCONNECT_WATCH_OFF = "X-Request-Disconnect-Disabled"
"""Set on every request passed on (value ``?1``): Ray's direct ingress then awaits the app itself instead of
running it in a task of its own beside a second task that watches the connection for a hang-up (two
tasks and an ``asyncio.wait`` per request, 5-10% of the ingress's CPU per request). A client that hangs
up no longer cancels its request: it runs to its end, within ``resilience.request_timeout_s``, and the
answer goes nowhere, as with a plain server."""

# (status, reason phrase, error type, message, retry after seconds)
ERROR_RESPONSES: tuple[tuple[int, str, str, str, int | None], ...] = (
    (400, "Bad Request", "bad_request", "the request is not valid HTTP, or its headers are too large", None),
    (403, "Forbidden", "forbidden", "request refused by the front proxy", None),
    (405, "Method Not Allowed", "method_not_allowed", "method not allowed", None),
    (408, "Request Timeout", "request_timeout", "the request was not received in time; send it whole", None),
    (413, "Payload Too Large", "payload_too_large", "the request is too large", None),
    (429, "Too Many Requests", "rate_limited", "too many requests; retry later", 1),
    (500, "Internal Server Error", "internal_error", "internal error in the front proxy", None),
    (502, "Bad Gateway", "model_unavailable", "the gateway behind the front proxy is not answering", 1),
    (503, "Service Unavailable", "overloaded", "the gateway is at capacity; retry shortly", 1),
    (504, "Gateway Timeout", "model_timeout", "the gateway did not answer in time", 1),
)


def error_file(status: int, reason: str, kind: str, message: str, retry_after: int | None) -> bytes:
    """A raw HTTP response (HAProxy's ``errorfile`` format) with the one error body."""
    body = json.dumps({"error": {"type": kind, "message": message}}).encode()
    headers = [
        f"HTTP/1.1 {status} {reason}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-cache",
        "Connection: close",
    ]
    if retry_after is not None:
        headers.append(f"Retry-After: {retry_after}")
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + body


def render_config(
    settings: FrontProxySettings,
    *,
    listen_host: str,
    listen_port: int,
    serve_port: int,
    error_dir: Path,
    admin_socket: Path | None = None,
) -> str:
    """The HAProxy configuration for these settings (pure: no process, no file written)."""
    s = settings
    admin_socket = admin_socket or error_dir / "admin.sock"
    unhealthy = json.dumps(
        {"error": {"type": "model_unavailable", "message": "the gateway behind the front proxy is not answering"}}
    )
    draining = json.dumps({"error": {"type": "draining", "message": "the gateway is shutting down; retry shortly"}})
    bind = f"[{listen_host}]:{listen_port}" if ":" in listen_host else f"{listen_host}:{listen_port}"
    errorfiles = "\n".join(f"    errorfile {status} {error_dir / f'{status}.http'}" for status, *_ in ERROR_RESPONSES)
    return f"""# Generated by cascade serve (serving/front_proxy.py); do not edit.
global
    nbthread {s.threads}
    maxconn {s.max_connections + 64}
    stats socket {admin_socket} mode 600 level admin
    tune.bufsize {s.max_header_bytes}
    log stderr format short local0 warning

defaults
    mode http
    log global
    option http-buffer-request
    option forwardfor
    timeout connect 2s
    timeout http-request {_ms(s.header_timeout_s)}
    timeout client {_ms(s.idle_timeout_s)}
    timeout http-keep-alive {_ms(s.idle_timeout_s)}
    timeout server {_ms(s.upstream_timeout_s)}
    timeout queue {_ms(s.queue_timeout_s)}
{errorfiles}

frontend gateway
    bind {bind}
    maxconn {s.max_connections}
    unique-id-format %{{+X}}o%ci%cp%fp%Ts%rt%pid
    http-request set-header X-Request-Id %[unique-id] unless {{ req.hdr_cnt(x-request-id) eq 1 }} \
{{ req.hdr(x-request-id) -m reg {REQUEST_ID_PATTERN} }}
    http-request set-header {DISCONNECT_WATCH_OFF} ?1
    http-request return status 503 content-type application/json string '{draining}' hdr Retry-After 5 \
if {{ nbsrv(serve) eq 0 }} !{{ path /healthz }}
    http-after-response set-header Connection close if {{ nbsrv(serve) eq 0 }}
    http-request return status 200 content-type application/json string '{{"status": "ok"}}' \
if {{ path /healthz }} {{ nbsrv(probes) gt 0 }}
    http-request return status 503 content-type application/json string '{unhealthy}' hdr Retry-After 1 \
if {{ path /healthz }}
    use_backend probes if {{ path /readyz }}
    default_backend serve

backend serve
    server ray 127.0.0.1:{serve_port} maxconn {s.max_in_flight}

backend probes
    option httpchk GET /-/healthz
    server ray 127.0.0.1:{serve_port} check inter 1s fall 3 rise 1
"""


def wanted(settings: FrontProxySettings) -> tuple[bool, str | None]:
    """Whether to run HAProxy, and what to say when ``auto`` finds none installed."""
    if settings.kind == "none":
        return False, None
    if settings.kind == "haproxy" or shutil.which("haproxy"):
        return True, None
    return False, (
        "no front proxy (haproxy is not installed): slow or stalled clients can hold every ingress slot; "
        "apt-get install haproxy, or set http.front_proxy.kind: none to silence this"
    )


_PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
"""Looked up here, in the parent: the child between fork and exec only calls it."""


def _apart_from_the_terminal() -> None:
    """In HAProxy's process before it starts: a process group of its own, ended with its parent.

    A terminal's Ctrl-C signals its whole foreground process group. HAProxy stops at once on SIGINT
    and would cut the requests it holds, before ``cascade serve`` (which gets the same Ctrl-C) could
    drain them; in a group of its own it gets only what ``cascade serve`` sends it. Should
    ``cascade serve`` die without stopping it, the kernel sends it SIGTERM (Linux), as Ray does
    for its own processes, so no HAProxy is left holding the port.
    """
    os.setpgid(0, 0)
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _ms(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


class HAProxy:
    """HAProxy with a rendered config, as a child process; ``stop`` ends it."""

    def __init__(self, settings: FrontProxySettings, *, listen_host: str, listen_port: int, serve_port: int) -> None:
        binary = shutil.which("haproxy")
        if binary is None:
            raise ConfigError(
                "http.front_proxy is haproxy but no haproxy is on PATH: install Debian's haproxy package "
                "(apt-get install haproxy), or set http.front_proxy: none"
            )
        self._folder = Path(tempfile.mkdtemp(prefix="cascade-haproxy-"))
        errors = self._folder / "errors"
        errors.mkdir()
        for status, reason, kind, message, retry_after in ERROR_RESPONSES:
            (errors / f"{status}.http").write_bytes(error_file(status, reason, kind, message, retry_after))
        config = self._folder / "haproxy.cfg"
        self._admin = self._folder / "admin.sock"
        config.write_text(
            render_config(
                settings,
                listen_host=listen_host,
                listen_port=listen_port,
                serve_port=serve_port,
                error_dir=errors,
                admin_socket=self._admin,
            ),
            encoding="utf-8",
        )
        check = subprocess.run([binary, "-c", "-q", "-f", str(config)], capture_output=True, text=True)
        if check.returncode != 0:
            raise ConfigError(f"HAProxy rejected the generated config: {check.stderr.strip() or check.stdout.strip()}")
        self.log = self._folder / "haproxy.log"
        self.process = subprocess.Popen(
            [binary, "-W", "-db", "-f", str(config)],
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            preexec_fn=_apart_from_the_terminal,  # two system calls between fork and exec, nothing that locks
        )

    def alive(self) -> bool:
        return self.process.poll() is None

    def _admin_command(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(5)
            connection.connect(str(self._admin))
            connection.sendall(command.encode() + b"\n")
            received = b""
            while chunk := connection.recv(65536):
                received += chunk
        return received.decode()

    def _current(self, proxy: str, server: str) -> int:
        """HAProxy's current sessions (plus queued requests) of one row of ``show stat``."""
        lines = self._admin_command("show stat").splitlines()
        columns = lines[0].lstrip("# ").split(",")
        for line in lines[1:]:
            row = dict(zip(columns, line.split(","), strict=False))
            if row.get("pxname") == proxy and row.get("svname") == server:
                return int(row["scur"] or 0) + int(row.get("qcur") or 0)
        return 0

    def in_flight(self) -> int:
        """Requests HAProxy holds for the gateway now: passed on to Ray, or queued for a slot."""
        return self._current("serve", "ray")

    def drain(self, timeout_s: float) -> int:
        """New requests get a 503 ``draining`` with ``Retry-After``; wait for the accepted ones to finish.

        Then the listener closes (new connections are refused) and the connections it had accepted
        get their answer before ``stop``, so that the soft stop finds none whose request is still
        unread. Returns how many requests were still in flight at the deadline (0 on a clean drain).
        """
        self._admin_command("set server serve/ray state maint")
        started = time.monotonic()
        # Every response from now on says "Connection: close"; the minimum lets clients on keep-alive
        # connections get one, so that none sends a request just as the listener closes.
        while ((left := self.in_flight()) or time.monotonic() - started < DRAIN_MINIMUM_S) and (
            time.monotonic() - started < timeout_s
        ):
            time.sleep(0.1)
        self._admin_command("disable frontend gateway")
        closing = time.monotonic()
        while self._current("gateway", "FRONTEND") and time.monotonic() - closing < LISTENER_CLOSE_S:
            time.sleep(0.02)
        return left

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGUSR1: HAProxy's soft stop (finish what it holds), then kill after ``timeout_s``."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGUSR1)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self._folder, ignore_errors=True)


__all__ = [
    "ERROR_RESPONSES",
    "REQUEST_ID_PATTERN",
    "HAProxy",
    "error_file",
    "render_config",
    "wanted",
]

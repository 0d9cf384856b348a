"""The faults and the probe that ``cascade chaos`` (benchmarks/chaos.py) applies to a running gateway.

Each is a real thing done from outside, as an operator or an attacker would: find a replica by the
title Ray gives its process, hold stalled connections, send hostile requests, poll ``/healthz``.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import httpx

from serving import constants as c


def replica_pids(role: str, app: str = c.SERVE_APP_NAME) -> list[int]:
    """Processes whose title Ray set to ``ray::ServeReplica:<app>:<role>`` (what ``ps`` shows)."""
    prefix = f"ray::ServeReplica:{app}:{role}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(prefix):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


class Prober(threading.Thread):
    """``GET /healthz`` every 100 ms: (time, ms, status); status 0 when it failed or took over 5 s."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.samples: list[tuple[float, float, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self.stop.is_set():
                started = time.time()
                try:
                    status = client.get(f"{self.url}/healthz").status_code
                except httpx.HTTPError:
                    status = 0
                self.samples.append((started, (time.time() - started) * 1000, status))
                self.stop.wait(max(0.0, 0.1 - (time.time() - started)))


class Stalled(threading.Thread):
    """Keeps ``count`` connections open that sent headers and part of a body, re-opening what is cut."""

    HEAD = b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"

    def __init__(self, host: str, port: int, count: int) -> None:
        super().__init__(daemon=True)
        self.address = (host, port)
        self.count = count
        self.stop = threading.Event()
        self.opened = 0
        self.refused = 0

    def run(self) -> None:
        open_sockets: list[socket.socket] = []
        while not self.stop.is_set():
            alive = []
            for connection in open_sockets:  # keep the ones the server has not closed
                try:
                    connection.setblocking(False)
                    if connection.recv(1, socket.MSG_PEEK) == b"":
                        connection.close()
                        continue
                except BlockingIOError:
                    pass
                except OSError:
                    connection.close()
                    continue
                alive.append(connection)
            open_sockets = alive
            while len(open_sockets) < self.count and not self.stop.is_set():
                try:
                    connection = socket.create_connection(self.address, timeout=2)
                    connection.sendall(self.HEAD)
                    open_sockets.append(connection)
                    self.opened += 1
                except OSError:
                    self.refused += 1
                    break
            self.stop.wait(0.5)
        for connection in open_sockets:
            connection.close()


POISON_BODIES: list[bytes] = [
    b'{"inputs": ["ok", "lost \\ud800 card"]}',
    b'{"inputs": "\\u0000\\u0001 control"}',
    '{"inputs": "\u200b\ufeff"}'.encode(),
    b'{"inputs": "x", "n": ' + b"9" * 5000 + b"}",
    b"[" * 5000 + b"]" * 5000,
    b'{"inputs": "' + b"y" * 1_100_000 + b'"}',
    b'{"inputs": ' + json.dumps(["z" * 1999] * 64).encode() + b', "route": "teacher"}',
]


class Poison(threading.Thread):
    """Hostile requests, back to back from 4 clients: (status, count)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.stop = threading.Event()
        self.statuses: dict[int, int] = {}
        self._lock = threading.Lock()

    def run(self) -> None:
        threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _client(self, offset: int) -> None:
        with httpx.Client(timeout=30) as client:
            i = offset
            while not self.stop.is_set():
                body = POISON_BODIES[i % len(POISON_BODIES)]
                try:
                    status = client.post(
                        f"{self.url}/v1/classify", content=body, headers={"content-type": "application/json"}
                    ).status_code
                except httpx.HTTPError:
                    status = 0
                with self._lock:
                    self.statuses[status] = self.statuses.get(status, 0) + 1
                i += 4


__all__ = ["POISON_BODIES", "Poison", "Prober", "Stalled", "replica_pids"]

"""``cascade serve`` as a child process: start it, wait until it is ready, stop it as a user would.

One helper for everything that runs a gateway in another process: the benchmarks, the load test's
orchestration and the end-to-end tests. Stopping sends SIGINT (Ctrl-C: the gateway drains and ends
every Ray process it started) and kills only if that takes longer than ``stop_timeout_s``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx

from serving import constants as c
from serving.errors import CascadeError


def cascade_command(*args: str) -> list[str]:
    """``cascade ARGS`` with this interpreter (works without the console script on PATH)."""
    return [sys.executable, "-m", "serving.cli", *args]


def wait_until_ready(
    base_url: str,
    deadline_s: float,
    *,
    alive: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Poll ``/readyz`` until it answers 200; fail early if ``alive`` exits or ``stop`` is set (Ctrl-C
    during start-up), late with the last answer."""
    stop_at = time.monotonic() + deadline_s
    last = "no answer"
    while time.monotonic() < stop_at:
        if stop is not None and stop.is_set():
            raise CascadeError("stopped before the gateway was ready")
        if alive is not None and alive.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log is not None else ""
            raise CascadeError(f"the gateway exited with {alive.returncode} before it was ready:\n{tail}")
        try:
            response = httpx.get(f"{base_url}/readyz", timeout=c.READINESS_PROBE_TIMEOUT_S + 1)
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text[:200]}"
        except httpx.HTTPError as error:
            last = repr(error)
        time.sleep(0.5)
    raise CascadeError(f"the gateway was not ready within {deadline_s:.0f} s (last /readyz: {last})")


class ChildProcess:
    """A command with its output in a log file; ``stop`` sends SIGINT, then kills after a timeout."""

    def __init__(
        self,
        command: Sequence[str],
        log: Path,
        *,
        cpus: str | None = None,
        env: Mapping[str, str] | None = None,
        stop_timeout_s: float = 120.0,
    ) -> None:
        self.command = ["taskset", "-c", cpus, *command] if cpus else list(command)
        self.log = log
        self.stop_timeout_s = stop_timeout_s
        log.parent.mkdir(parents=True, exist_ok=True)
        # Its own process group: should it have to be killed, everything it started goes with it
        # (a killed `cascade serve` used to leave Ray's agents behind, holding the metrics port).
        self.process = subprocess.Popen(
            self.command,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> int:
        """Ctrl-C, as a terminal sends it; SIGKILL only if it has not ended within ``stop_timeout_s``.

        A terminal signals its whole foreground process group, not only the command: so does this,
        so that what the command started (HAProxy, Ray's processes) gets the Ctrl-C a user's would.
        """
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGINT)
            try:
                return self.process.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
        return self.process.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()


class GatewayProcess(ChildProcess):
    """``cascade serve --config CONFIG`` on ``host:port``, ready (``/readyz`` answered 200) once constructed."""

    def __init__(
        self,
        config: Path | None,
        log: Path,
        *,
        port: int,
        host: str = c.DEFAULT_HOST,
        extra_args: Sequence[str] = (),
        cpus: str | None = None,
        env: Mapping[str, str] | None = None,
        startup_timeout_s: float = c.DEFAULT_STARTUP_TIMEOUT_S,
        stop_timeout_s: float = 120.0,
    ) -> None:
        args = ["serve", "--host", host, "--port", str(port), *extra_args]
        if config is not None:
            args += ["--config", str(config)]
        super().__init__(cascade_command(*args), log, cpus=cpus, env=env, stop_timeout_s=stop_timeout_s)
        self.url = f"http://{host}:{port}"
        try:
            wait_until_ready(self.url, startup_timeout_s, alive=self.process, log=log)
        except BaseException:
            self.stop()
            raise


__all__ = ["ChildProcess", "GatewayProcess", "cascade_command", "wait_until_ready"]

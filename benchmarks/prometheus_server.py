"""A real Prometheus for a measurement: started from a config, ready when it says so, killed after."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from serving.ports import free_local_port


def start_prometheus(
    config: dict[str, Any], folder: Path, deadline_s: float = 60.0
) -> tuple[subprocess.Popen[bytes], str]:
    """Prometheus (Debian's ``prometheus``) with ``config``, its data and log in ``folder``; (process, URL)."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise RuntimeError("prometheus not found: install Debian's `prometheus` package")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    port = free_local_port()
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(folder / "prometheus.log").open("wb"),
    )
    url = f"http://127.0.0.1:{port}"
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    process.kill()
    raise RuntimeError(f"Prometheus did not become ready: {(folder / 'prometheus.log').read_text()[-2000:]}")


__all__ = ["start_prometheus"]

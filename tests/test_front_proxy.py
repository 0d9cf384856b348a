"""The front proxy's generated HAProxy config and error responses (HAProxy itself checks the config)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from serving.config import FrontProxySettings
from serving.front_proxy import DISCONNECT_WATCH_OFF, ERROR_RESPONSES, error_file, render_config, wanted


def _render(tmp_path: Path, **settings: object) -> str:
    return render_config(
        FrontProxySettings.model_validate(settings),
        listen_host="0.0.0.0",
        listen_port=8000,
        serve_port=41234,
        error_dir=tmp_path,
    )


def test_config_carries_the_timeouts_limits_and_the_request_id_rule(tmp_path: Path) -> None:
    config = _render(
        tmp_path, header_timeout_s=2.5, max_connections=1000, max_in_flight=64, queue_timeout_s=0.5, threads=3
    )
    assert "nbthread 3" in config
    assert "timeout http-request 2500ms" in config and "timeout queue 500ms" in config
    assert "option http-buffer-request" in config  # the body counts in the header timeout
    assert "bind 0.0.0.0:8000" in config and "maxconn 1000" in config
    assert "server ray 127.0.0.1:41234 maxconn 64" in config
    assert "set-header X-Request-Id %[unique-id] unless" in config
    assert "stats socket" in config and "mode 600 level admin" in config
    assert '"type": "draining"' in config and "hdr Retry-After 5" in config
    for status, *_ in ERROR_RESPONSES:
        assert f"errorfile {status} {tmp_path / f'{status}.http'}" in config


def test_requests_through_it_tell_ray_not_to_watch_for_a_hang_up(tmp_path: Path) -> None:
    """Ray's direct ingress skips its two tasks per request only for this exact header and value."""
    from ray.serve._private.http_util import parse_disconnect_disabled_header

    (line,) = [line for line in _render(tmp_path).splitlines() if DISCONNECT_WATCH_OFF in line]
    *_, name, value = line.split()
    assert line.strip().startswith("http-request set-header")
    assert parse_disconnect_disabled_header({name.lower().encode(): value.encode()})
    assert not parse_disconnect_disabled_header({})


def test_ipv6_listen_address_is_bracketed(tmp_path: Path) -> None:
    assert "bind [::]:8000" in render_config(
        FrontProxySettings(), listen_host="::", listen_port=8000, serve_port=1, error_dir=tmp_path
    )


@pytest.mark.parametrize(("status", "reason", "kind", "message", "retry_after"), ERROR_RESPONSES)
def test_every_error_file_is_an_http_response_in_the_one_shape(
    status: int, reason: str, kind: str, message: str, retry_after: int | None
) -> None:
    head, _, body = error_file(status, reason, kind, message, retry_after).partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == f"HTTP/1.1 {status} {reason}"
    assert f"Content-Length: {len(body)}" in lines
    assert json.loads(body) == {"error": {"type": kind, "message": message}}
    assert ("Retry-After: 1" in lines) == (retry_after is not None)


def test_kind_none_and_auto_without_haproxy(monkeypatch: pytest.MonkeyPatch) -> None:
    assert wanted(FrontProxySettings(kind="none")) == (False, None)
    monkeypatch.setattr(shutil, "which", lambda _: None)
    use, notice = wanted(FrontProxySettings())
    assert not use and notice is not None and "apt-get install haproxy" in notice


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed (.ci/run installs it)")
def test_haproxy_accepts_the_generated_config(tmp_path: Path) -> None:
    for status, reason, kind, message, retry_after in ERROR_RESPONSES:
        (tmp_path / f"{status}.http").write_bytes(error_file(status, reason, kind, message, retry_after))
    path = tmp_path / "haproxy.cfg"
    path.write_text(_render(tmp_path), encoding="utf-8")
    check = subprocess.run(["haproxy", "-c", "-f", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert "Warnings were found" not in check.stdout, check.stderr


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed (.ci/run installs it)")
def test_a_haproxy_left_on_a_stopped_rays_folder_is_ended_and_no_other(tmp_path: Path) -> None:
    from serving.lifecycle import release_ray_haproxy
    from serving.ports import free_local_port

    def start(folder: Path) -> subprocess.Popen[bytes]:
        (folder / "node-id").mkdir(parents=True)  # Ray puts its files in a folder per node inside ours
        config = folder / "node-id" / "haproxy.cfg"
        config.write_text(
            f"defaults\n  mode http\n  timeout connect 1s\n  timeout client 1s\n  timeout server 1s\n"
            f"frontend f\n  bind 127.0.0.1:{free_local_port()}\n  http-request return status 200\n",
            encoding="utf-8",
        )
        return subprocess.Popen(["haproxy", "-db", "-f", str(config)], start_new_session=True)

    left, other = start(tmp_path / "stopped-ray"), start(tmp_path / "running-ray")
    try:
        assert release_ray_haproxy(tmp_path / "stopped-ray") == [left.pid]
        assert left.wait(timeout=10) is not None
        assert not (tmp_path / "stopped-ray").exists()
        assert other.poll() is None  # another Ray's HAProxy keeps running
    finally:
        for process in (left, other):
            process.kill()
            process.wait(timeout=10)

"""API keys: identification, rotation, live reload of a keys file, quotas, and who may listen where."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from serving.auth import ANONYMOUS, Authenticator, exposure_notice, hash_key
from serving.config import ApiKeySettings, AuthSettings, parse_config
from serving.errors import ConfigError, Forbidden, RateLimited, Unauthorized, error_headers, error_response


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _key(name: str, secret: str, **limits: object) -> ApiKeySettings:
    return ApiKeySettings(name=name, sha256=hash_key(secret), **limits)


def _authenticator(*keys: ApiKeySettings, keys_file: Path | None = None) -> tuple[Authenticator, Clock]:
    clock = Clock()
    auth = Authenticator(clock)
    auth.configure(AuthSettings(keys=keys, keys_file=str(keys_file) if keys_file else None))
    return auth, clock


def test_without_keys_everyone_is_the_anonymous_caller() -> None:
    auth = Authenticator()
    auth.configure(None)
    assert not auth.enabled and auth.identify(None).name == ANONYMOUS


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, "missing API key"),
        ("", "missing API key"),
        ("Basic c2VjcmV0", "must be 'Bearer <key>'"),
        ("Bearer ", "must be 'Bearer <key>'"),
        ("Bearer wrong-secret", "unknown API key"),
        ("Bearer s3cret-a ", None),
    ],
)
def test_a_request_is_let_in_only_with_a_known_bearer_key(header: str | None, message: str | None) -> None:
    auth, _ = _authenticator(_key("app-a", "s3cret-a"))
    if message is None:
        assert auth.identify(header).name == "app-a"
        return
    with pytest.raises(Unauthorized, match=message) as caught:
        auth.identify(header)
    assert error_response(caught.value)[0] == 401
    assert error_headers(caught.value)["WWW-Authenticate"].startswith("Bearer")


def test_two_keys_at_once_let_a_key_be_rotated() -> None:
    auth, _ = _authenticator(_key("app-old", "old"), _key("app-new", "new"))
    assert auth.identify("Bearer old").name == "app-old"
    assert auth.identify("bearer new").name == "app-new"


def test_a_keys_file_is_reloaded_when_it_changes_and_a_broken_one_keeps_the_keys_in_force(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"

    def write(entries: list[ApiKeySettings], stamp: float) -> None:
        path.write_text(yaml.safe_dump({"keys": [e.model_dump() for e in entries]}), encoding="utf-8")
        os.utime(path, (stamp, stamp))

    write([_key("first", "one")], 1_000_000)
    auth, clock = _authenticator(keys_file=path)
    assert auth.identify("Bearer one").name == "first"
    write([_key("second", "two")], 1_000_100)  # the rotation's last step: the old key is gone
    assert auth.identify("Bearer one").name == "first"  # not looked at again within the poll interval
    clock.now += 1.5
    assert auth.identify("Bearer two").name == "second"
    with pytest.raises(Unauthorized):
        auth.identify("Bearer one")
    path.write_text("keys: [{name: broken}]", encoding="utf-8")
    os.utime(path, (1_000_200, 1_000_200))
    clock.now += 1.5
    assert auth.identify("Bearer two").name == "second"


def test_a_missing_keys_file_is_a_config_error_at_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="keys_file"):
        _authenticator(keys_file=tmp_path / "absent.yaml")


def test_request_rate_gives_429_with_the_wait_and_refills() -> None:
    auth, clock = _authenticator(_key("app", "k", requests_per_minute=2))
    caller = auth.identify("Bearer k")
    caller.admit_request()
    caller.admit_request()
    with pytest.raises(RateLimited) as caught:
        caller.admit_request()
    status, body = error_response(caught.value)
    assert (
        status == 429 and body["error"]["type"] == "rate_limited" and "requests_per_minute" in body["error"]["message"]
    )
    assert error_headers(caught.value)["Retry-After"] == "30"
    clock.now += 30
    caller.admit_request()


def test_teacher_budget_and_forced_route_permission() -> None:
    auth, _ = _authenticator(
        _key("small", "s", teacher_texts_per_minute=3), _key("trusted", "t", allow_teacher_route=True)
    )
    small = auth.identify("Bearer s")
    with pytest.raises(Forbidden, match="allow_teacher_route"):
        small.check_forced_teacher()
    auth.identify("Bearer t").check_forced_teacher()
    small.take_teacher_texts(2)
    with pytest.raises(RateLimited, match="teacher_texts_per_minute"):
        small.take_teacher_texts(2)  # all or nothing: one left, two asked
    small.take_teacher_texts(1)


def test_limits_survive_a_reload_that_does_not_change_them(tmp_path: Path) -> None:
    auth, _ = _authenticator(_key("app", "k", requests_per_minute=1))
    auth.identify("Bearer k").admit_request()
    auth.configure(AuthSettings(keys=(_key("app", "k", requests_per_minute=1),)))
    with pytest.raises(RateLimited):
        auth.identify("Bearer k").admit_request()


def test_serve_refuses_an_open_non_loopback_address_and_says_so_on_loopback() -> None:
    keys = AuthSettings(keys=(_key("app", "k"),))
    assert exposure_notice(keys, "0.0.0.0") is None
    assert "anyone on this machine" in (exposure_notice(None, "127.0.0.1") or "")
    assert "anyone on this machine" in (exposure_notice(None, "::1") or "")
    with pytest.raises(ConfigError, match=r"refusing to listen on 0\.0\.0\.0 without API keys"):
        exposure_notice(None, "0.0.0.0")
    assert "auth: none" in (exposure_notice("none", "10.0.0.5") or "")


def test_auth_config_names_the_field_and_the_way_out() -> None:
    base = {"student": {"model": "s"}, "teacher": {"model": "t"}}
    with pytest.raises(ConfigError, match="auth: none"):
        parse_config({**base, "auth": {}})
    with pytest.raises(ConfigError, match=r"auth.*keys.0.sha256"):
        parse_config({**base, "auth": {"keys": [{"name": "a", "sha256": "not-a-hash"}]}})
    with pytest.raises(ConfigError, match="unique"):
        entry = {"name": "a", "sha256": hash_key("x")}
        parse_config({**base, "auth": {"keys": [entry, entry]}})
    assert parse_config({**base, "auth": "none"}).auth == "none"

"""API keys and per-key quotas for ``/v1/*``: who may call, how often, and how much teacher time.

A client sends ``Authorization: Bearer <key>``. The gateway keeps only SHA-256 hashes of keys (from
the config and from ``auth.keys_file``, re-read when the file changes) and compares the hash of what
it is given with every known hash in constant time, so neither a wrong key nor a near miss answers
faster. Limits are token buckets per key and ingress replica (``router.quota``).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from router.quota import RateLimiter
from serving import constants as c
from serving.config import ApiKeySettings, AuthSettings
from serving.errors import ConfigError, Forbidden, RateLimited, Unauthorized

logger = logging.getLogger("cascade.auth")

ANONYMOUS = "anonymous"
"""The key name that metrics use when the gateway runs without keys (``auth: none``, or unset on loopback)."""

_MAX_RETRY_AFTER_S = 60.0


def hash_key(secret: str) -> str:
    """The SHA-256 (hex) that the config stores for a key."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_notice(auth: AuthSettings | Literal["none"] | None, host: str) -> str | None:
    """What ``cascade serve`` says at start about who may call it; ``ConfigError`` where it must not start.

    Without keys the gateway may listen on loopback only, unless the config says ``auth: none`` on purpose.
    """
    if isinstance(auth, AuthSettings):
        return None
    if auth is None and not is_loopback(host):
        raise ConfigError(
            f"refusing to listen on {host} without API keys: add auth.keys (see `cascade keys new`), "
            "or set 'auth: none' to let anyone who reaches it in"
        )
    if auth is None:
        return f"no API keys: anyone on this machine may call {host} (add auth.keys before exposing it)"
    return f"auth: none: anyone who reaches {host} may call the gateway and spend the teacher"


class _KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    keys: tuple[ApiKeySettings, ...]


def read_keys_file(path: str) -> tuple[ApiKeySettings, ...]:
    """The ``keys:`` list of a keys file; a ``ConfigError`` names the file and the field."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
        return _KeysFile.model_validate(data).keys
    except OSError as error:
        raise ConfigError(f"cannot read auth.keys_file {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"auth.keys_file {path} is not valid YAML: {error}") from None
    except ValidationError as error:
        where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise ConfigError(f"auth.keys_file {path} is invalid: {where}") from None


@dataclass
class Caller:
    """Who is calling, with the buckets their limits draw from (none when unlimited)."""

    name: str
    allow_teacher_route: bool = True
    requests: RateLimiter | None = None
    teacher_texts: RateLimiter | None = None
    teacher_seconds: float = field(default=0.0)

    def admit_request(self) -> None:
        """Take one request from the key's rate, or refuse with the wait."""
        if self.requests is not None and not self.requests.try_take(1):
            raise RateLimited(
                f"key {self.name!r} is over its requests_per_minute; retry later",
                retry_after_s=min(_MAX_RETRY_AFTER_S, self.requests.wait_s(1)),
            )

    def check_forced_teacher(self) -> None:
        if not self.allow_teacher_route:
            raise Forbidden(f"key {self.name!r} may not use route: teacher (allow_teacher_route is false)")

    def take_teacher_texts(self, count: int) -> None:
        """Spend ``count`` texts of the key's teacher budget, or raise ``RateLimited`` and spend nothing."""
        bucket = self.teacher_texts
        if bucket is None or bucket.try_take(count):
            return
        raise RateLimited(
            f"key {self.name!r} is over its teacher_texts_per_minute ({count} teacher texts asked)",
            retry_after_s=min(_MAX_RETRY_AFTER_S, bucket.wait_s(count)),
        )


ANONYMOUS_CALLER = Caller(ANONYMOUS)


class KeyRing:
    """The keys in force and their buckets; a key whose limits are unchanged keeps its buckets on reload."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._keys: dict[str, ApiKeySettings] = {}
        self._callers: dict[str, Caller] = {}

    @property
    def names(self) -> list[str]:
        return sorted(self._keys)

    def load(self, keys: Iterable[ApiKeySettings]) -> None:
        keys = list(keys)
        names = [key.name for key in keys]
        if len(set(names)) != len(names):
            raise ConfigError(f"API key names must be unique across auth.keys and auth.keys_file, got {names}")
        fresh: dict[str, Caller] = {}
        for key in keys:
            old = self._keys.get(key.name)
            if old == key and key.name in self._callers:
                fresh[key.name] = self._callers[key.name]
                continue
            fresh[key.name] = Caller(
                key.name,
                allow_teacher_route=key.allow_teacher_route,
                requests=RateLimiter(key.requests_per_minute, clock=self._clock) if key.requests_per_minute else None,
                teacher_texts=RateLimiter(key.teacher_texts_per_minute, clock=self._clock)
                if key.teacher_texts_per_minute
                else None,
            )
        self._keys = {key.name: key for key in keys}
        self._callers = fresh

    def identify(self, authorization: str | None) -> Caller:
        """The caller that ``Authorization: Bearer <key>`` names; ``Unauthorized`` otherwise."""
        if not authorization:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        scheme, _, secret = authorization.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise Unauthorized("the Authorization header must be 'Bearer <key>'")
        presented = hash_key(secret.strip()).encode("ascii")
        found: str | None = None
        for name, key in self._keys.items():  # every hash is compared: the time does not depend on which matched
            if hmac.compare_digest(presented, key.sha256.encode("ascii")):
                found = name
        if found is None:
            raise Unauthorized("unknown API key")
        return self._callers[found]


class Authenticator:
    """The gateway's door: no keys (``auth: none`` or unset), or a key ring fed by config and file."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._ring = KeyRing(clock)
        self._settings: AuthSettings | None = None
        self._file_stamp: tuple[float, int] | None = None
        self._next_look = 0.0
        self._clock = clock

    @property
    def enabled(self) -> bool:
        return self._settings is not None

    @property
    def key_names(self) -> list[str]:
        return self._ring.names if self.enabled else [ANONYMOUS]

    def configure(self, settings: AuthSettings | None) -> None:
        """Apply ``auth`` from the config (None: no keys). Raises ``ConfigError`` on a bad keys file."""
        self._settings = settings
        self._file_stamp = None
        self._next_look = 0.0
        if settings is not None:
            self._reload(force=True)

    def _reload(self, force: bool = False) -> None:
        settings = self._settings
        assert settings is not None
        keys = list(settings.keys)
        if settings.keys_file:
            try:
                stat = os.stat(settings.keys_file)
            except OSError as error:
                raise ConfigError(f"cannot read auth.keys_file {settings.keys_file}: {error.strerror}") from None
            stamp = (stat.st_mtime, stat.st_size)
            if not force and stamp == self._file_stamp:
                return
            keys += read_keys_file(settings.keys_file)
            self._file_stamp = stamp
        self._ring.load(keys)

    def _maybe_reload(self) -> None:
        """Look at the keys file at most every ``KEYS_FILE_POLL_S``; a bad file keeps the keys in force."""
        if self._settings is None or not self._settings.keys_file or self._clock() < self._next_look:
            return
        self._next_look = self._clock() + c.KEYS_FILE_POLL_S
        try:
            self._reload()
        except ConfigError as error:
            logger.error("auth.keys_file not reloaded, the keys in force stay: %s", error)

    def identify(self, authorization: str | None) -> Caller:
        if self._settings is None:
            return ANONYMOUS_CALLER
        self._maybe_reload()
        return self._ring.identify(authorization)


__all__ = [
    "ANONYMOUS",
    "Authenticator",
    "Caller",
    "KeyRing",
    "exposure_notice",
    "hash_key",
    "is_loopback",
    "read_keys_file",
]

"""Helpers for tests that talk HTTP to a running gateway."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tests.builders import TinyPair

BAD_REQUESTS: list[tuple[str, bytes, int, str]] = [
    ("invalid JSON", b"{nope", 400, "invalid_json"),
    ("missing inputs", b'{"route": "auto"}', 422, "invalid_request"),
    ("empty inputs", b'{"inputs": []}', 422, "invalid_request"),
    ("empty string", b'{"inputs": ""}', 422, "invalid_request"),
    ("lone surrogate", b'{"inputs": ["ok", "lost \\ud800 card"]}', 422, "invalid_request"),
    ("invisible only", '{"inputs": "\u200b\ufeff"}'.encode(), 422, "invalid_request"),
    ("huge integer", b'{"inputs": "x", "n": ' + b"9" * 500 + b"}", 400, "invalid_json"),
    ("non-string item", b'{"inputs": ["ok", 42]}', 422, "invalid_request"),
    ("too many inputs", json.dumps({"inputs": ["x"] * 9}).encode(), 422, "limit_exceeded"),
    ("text too long", json.dumps({"inputs": "y" * 201}).encode(), 422, "limit_exceeded"),
    ("unknown route", b'{"inputs": "x", "route": "oracle"}', 422, "invalid_request"),
    ("body over the size limit", json.dumps({"inputs": "z" * 5000}).encode(), 413, "payload_too_large"),
]
LIMITS = {"max_body_bytes": 4000, "max_inputs": 8, "max_text_chars": 200}


def gateway_config(pair: TinyPair, *, threshold: float, port: int, max_batch_size: int = 4) -> dict[str, Any]:
    def role(model: Path) -> dict[str, Any]:
        return {
            "model": str(model),
            "threads": 1,
            "max_length": 32,
            "batching": {"max_batch_size": max_batch_size, "batch_wait_timeout_s": 0.002},
            "deployment": {"num_cpus": 0.5, "max_ongoing_requests": 16, "max_queued_requests": 64},
        }

    return {
        "http": {"host": "127.0.0.1", "port": port},
        "limits": LIMITS,
        "cascade": {"signal": "max_prob", "threshold": threshold},
        "student": role(pair.student),
        "teacher": role(pair.teacher),
    }


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path

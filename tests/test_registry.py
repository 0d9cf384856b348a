"""The model registry: versions, atomic promotion, rollback, and serving by registry reference."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from serving.artifact import MANIFEST_NAME
from serving.errors import ArtifactError
from serving.model_ref import resolve_model
from serving.registry import Registry
from tests.builders import TinyPair


def _version_of(artifact: Path, tmp_path: Path, version: str) -> Path:
    """A copy of ``artifact`` whose manifest says ``version`` (checksums stay valid: the manifest is not listed)."""
    copy = tmp_path / f"v{version}"
    shutil.copytree(artifact, copy)
    manifest = json.loads((copy / MANIFEST_NAME).read_text())
    manifest["version"] = version
    (copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    return copy


@pytest.fixture
def registry(tiny_pair: TinyPair, tmp_path: Path) -> Registry:
    registry = Registry(tmp_path / "registry")
    for version in ("1", "2"):
        registry.add(_version_of(tiny_pair.student, tmp_path, version))
    registry.add(tiny_pair.teacher)
    return registry


def test_promote_rollback_and_serve_by_reference(registry: Registry) -> None:
    assert [(e.name, e.version) for e in registry.entries()] == [
        ("tiny-student", "1"),
        ("tiny-student", "2"),
        ("tiny-teacher", "1"),
    ]
    assert registry.current("student") is None
    with pytest.raises(ArtifactError, match="no version of student has been promoted"):
        resolve_model(f"registry:{registry.root}/student")

    registry.promote("student", "tiny-student", "1")
    registry.promote("student", "tiny-student", "2", reason="better agreement")
    assert resolve_model(f"registry:{registry.root}/student").version == "tiny-student:2"

    assert registry.rollback("student").version == "1"
    assert resolve_model(f"registry:{registry.root}/student").version == "tiny-student:1"
    with pytest.raises(ArtifactError, match="nothing to roll back to"):
        registry.rollback("student")


def test_promotion_checks_role_and_existence(registry: Registry) -> None:
    with pytest.raises(ArtifactError, match="is a teacher, not a student"):
        registry.promote("student", "tiny-teacher", "1")
    with pytest.raises(ArtifactError, match="tiny-student:9 is not in the registry"):
        registry.promote("student", "tiny-student", "9")
    with pytest.raises(ArtifactError, match="already in the registry"):
        registry.add(registry.path_of("tiny-student", "1"))
    registry.promote("middle", "tiny-student", "2")  # a student may serve as a chain's middle model
    assert resolve_model(f"registry:{registry.root}/middle").version == "tiny-student:2"
    with pytest.raises(ArtifactError, match="is a teacher, not a middle"):
        registry.promote("middle", "tiny-teacher", "1")


def test_a_crash_midway_through_promotion_leaves_the_old_pointer(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.promote("student", "tiny-student", "1")
    pointer = registry.root / "roles" / "student.json"
    before = pointer.read_bytes()

    def crash(*_: object) -> None:
        raise KeyboardInterrupt("killed between writing the new pointer and renaming it")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        registry.promote("student", "tiny-student", "2")
    monkeypatch.undo()
    assert pointer.read_bytes() == before
    assert registry.current("student").version == "1"  # type: ignore[union-attr]


def test_a_tampered_registry_entry_is_refused(registry: Registry) -> None:
    registry.promote("student", "tiny-student", "1")
    with (registry.path_of("tiny-student", "1") / "config.json").open("a") as handle:
        handle.write(" ")
    with pytest.raises(ArtifactError, match="checksum"):
        resolve_model(f"registry:{registry.root}/student")


def test_the_watcher_follows_the_pointer_and_tries_a_refused_change_once(registry: Registry) -> None:
    """What each replica and the ingress run (serving.swap): a moved pointer calls back once, a refusal sticks."""
    import asyncio

    from serving.errors import ArtifactError
    from serving.swap import RegistryWatcher

    registry.promote("student", "tiny-student", "1")
    first, second = (str(registry.path_of("tiny-student", v)) for v in ("1", "2"))
    calls: list[str] = []
    refuse = {second}

    async def on_change(location: str) -> None:
        calls.append(location)
        if location in refuse:
            raise ArtifactError("other labels")

    async def scenario() -> list[bool]:
        watcher = RegistryWatcher(f"registry:{registry.root}/student", first, 0.01, on_change, "student")
        taken = [await watcher.check()]  # nothing moved
        registry.promote("student", "tiny-student", "2")
        taken += [await watcher.check(), await watcher.check()]  # refused once, then not tried again
        refuse.clear()
        registry.rollback("student")
        taken.append(await watcher.check())  # back to 1: taken
        return taken

    assert asyncio.run(scenario()) == [False, False, False, True]
    assert calls == [second, first]

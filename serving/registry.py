"""The model registry: artifacts stored as ``<root>/<name>/<version>/``, one current pointer per role.

    <root>/
      demo-student/1/ ... manifest.json      artifacts, immutable once added
      demo-student/2/ ...
      roles/student.json                      {"current": {"name", "version"}, "history": [...]}

Promotion and rollback only rewrite ``roles/<role>.json``, by writing a temporary file and renaming
it over the old one (``os.replace`` is atomic on POSIX): a crash midway leaves the old pointer
intact. Serving names a registry entry as ``registry:<root>/<role>`` in its config.

It lives in ``serving`` because serving must read pointers; ``distill`` writes through it.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from serving.artifact import MANIFEST_NAME, Manifest, verify_artifact
from serving.errors import ArtifactError
from serving.vocabulary import REGISTRY_PREFIX, ROLES


@dataclass(frozen=True)
class Entry:
    name: str
    version: str
    path: Path
    manifest: Manifest


class Registry:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()

    def _pointer(self, role: str) -> Path:
        if role not in ROLES:
            raise ArtifactError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        return self.root / "roles" / f"{role}.json"

    def path_of(self, name: str, version: str) -> Path:
        return self.root / name / version

    def add(self, artifact: str | Path, *, overwrite: bool = False) -> Entry:
        """Copy a verified artifact in as ``<name>/<version>`` (from its manifest), staged then renamed."""
        source = Path(artifact)
        manifest = verify_artifact(source)
        destination = self.path_of(manifest.name, manifest.version)
        if destination.exists() and not overwrite:
            raise ArtifactError(f"{manifest.name}:{manifest.version} is already in the registry at {destination}")
        destination.parent.mkdir(parents=True, exist_ok=True)
        staging = destination.parent / f".{manifest.version}.partial-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            shutil.copytree(source, staging)
            verify_artifact(staging)
            if destination.exists():
                shutil.rmtree(destination)
            os.replace(staging, destination)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return Entry(manifest.name, manifest.version, destination, manifest)

    def entries(self) -> list[Entry]:
        found = []
        for manifest_path in sorted(self.root.glob(f"*/*/{MANIFEST_NAME}")):
            folder = manifest_path.parent
            if folder.name.startswith(".") or folder.parent.name == "roles":
                continue
            manifest = Manifest.model_validate_json(manifest_path.read_text(encoding="utf-8"))
            found.append(Entry(folder.parent.name, folder.name, folder, manifest))
        return found

    def get(self, name: str, version: str) -> Entry:
        folder = self.path_of(name, version)
        if not (folder / MANIFEST_NAME).exists():
            raise ArtifactError(f"{name}:{version} is not in the registry at {self.root}")
        return Entry(name, version, folder, verify_artifact(folder))

    def _read_pointer(self, role: str) -> dict[str, Any]:
        path = self._pointer(role)
        if not path.exists():
            return {"current": None, "history": []}
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return data

    def _write_pointer(self, role: str, data: dict[str, Any]) -> None:
        path = self._pointer(role)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with tmp.open("w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)

    def current_path(self, role: str) -> Path | None:
        """The current version's folder from the pointer alone (no checksum pass: cheap enough to poll)."""
        pointer = self._read_pointer(role)["current"]
        return self.path_of(pointer["name"], pointer["version"]) if pointer else None

    def current(self, role: str) -> Entry | None:
        pointer = self._read_pointer(role)["current"]
        return self.get(pointer["name"], pointer["version"]) if pointer else None

    def promote(self, role: str, name: str, version: str, *, reason: str = "") -> Entry:
        """Point ``role`` at ``name:version`` (which must exist and be intact); keeps the history.

        A student artifact may also serve as the middle model of a chain.
        """
        entry = self.get(name, version)
        if entry.manifest.role != role and not (role == "middle" and entry.manifest.role == "student"):
            raise ArtifactError(f"{name}:{version} is a {entry.manifest.role}, not a {role}")
        data = self._read_pointer(role)
        if data["current"]:
            data["history"].append(data["current"])
        data["current"] = {
            "name": name,
            "version": version,
            "since": datetime.now(UTC).isoformat(timespec="seconds"),
            "reason": reason,
        }
        self._write_pointer(role, data)
        return entry

    def rollback(self, role: str) -> Entry:
        """Point ``role`` back at the version it had before the last promotion."""
        data = self._read_pointer(role)
        if not data["history"]:
            raise ArtifactError(f"nothing to roll back to: {role} has no earlier version")
        previous = data["history"].pop()
        entry = self.get(previous["name"], previous["version"])
        data["current"] = {
            **previous,
            "since": datetime.now(UTC).isoformat(timespec="seconds"),
            "reason": "rollback",
        }
        self._write_pointer(role, data)
        return entry


def resolve_registry_reference(reference: str) -> Path:
    """``registry:<root>/<role>`` → the folder of that role's current version (read from the pointer alone).

    The caller verifies the artifact (``serving.model_ref.resolve_model`` does): hashing it here too
    would read every weight file twice.
    """
    location = Path(reference.removeprefix(REGISTRY_PREFIX)).expanduser()
    path = Registry(location.parent).current_path(location.name)
    if path is None:
        raise ArtifactError(f"{reference}: no version of {location.name} has been promoted yet")
    return path

"""Model artifacts: a folder with weights, tokenizer and a ``manifest.json`` that says what it is.

The manifest carries a SHA-256 of every other file in the folder. Serving verifies them before it
loads anything, so a half-copied or tampered folder is refused rather than served. A plain Hugging
Face folder or hub id (no manifest) is accepted too: its labels come from ``config.id2label`` and
there is nothing to verify.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serving.errors import ArtifactError

MANIFEST_NAME = "manifest.json"
ONNX_NAME = "model.onnx"
ONNX_INT8_NAME = "model.int8.onnx"
MANIFEST_SCHEMA_VERSION = 1

Role = Literal["teacher", "student"]
Format = Literal["hf", "onnx", "onnx-int8"]


class Manifest(BaseModel):
    """What an artifact is. ``files`` maps each relative path to its SHA-256."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = MANIFEST_SCHEMA_VERSION
    name: str
    version: str
    role: Role
    task: Literal["text-classification"] = "text-classification"
    labels: list[str] = Field(min_length=2)
    formats: list[Format]
    temperature: float = Field(1.0, gt=0)
    parent: str | None = None
    """The teacher version a student was distilled from."""
    training: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    calibration: dict[str, Any] = Field(default_factory=dict)
    """Set by ``cascade calibrate``: signal, threshold, target, expectations, reference confidences."""
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    files: dict[str, str] = Field(default_factory=dict)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _artifact_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_NAME and not p.name.startswith(".")
    )


def detect_formats(folder: Path) -> list[Format]:
    formats: list[Format] = []
    if (folder / "config.json").exists():
        formats.append("hf")
    if (folder / ONNX_NAME).exists():
        formats.append("onnx")
    if (folder / ONNX_INT8_NAME).exists():
        formats.append("onnx-int8")
    return formats


def write_manifest(folder: Path, manifest: Manifest) -> Manifest:
    """Checksum every file in ``folder`` and write the manifest atomically (rename into place)."""
    files = {str(p.relative_to(folder)): sha256_file(p) for p in _artifact_files(folder)}
    final = manifest.model_copy(update={"files": files, "formats": detect_formats(folder)})
    tmp = folder / f".{MANIFEST_NAME}.tmp"
    tmp.write_text(final.model_dump_json(indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, folder / MANIFEST_NAME)
    return final


def read_manifest(folder: Path) -> Manifest:
    path = folder / MANIFEST_NAME
    try:
        return Manifest.model_validate_json(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ArtifactError(f"cannot read {path}: {error.strerror}") from None
    except ValidationError as error:
        raise ArtifactError(f"{path} is not a valid manifest: {error.errors()[0]['msg']}") from None


def verify_artifact(folder: Path) -> Manifest:
    """Read the manifest and check every listed file's checksum; raise ArtifactError on a mismatch."""
    manifest = read_manifest(folder)
    for relative, expected in manifest.files.items():
        path = folder / relative
        if not path.is_file():
            raise ArtifactError(f"{folder}: file {relative} listed in the manifest is missing")
        actual = sha256_file(path)
        if actual != expected:
            raise ArtifactError(
                f"{folder}: checksum of {relative} is {actual[:12]}…, the manifest says {expected[:12]}…"
            )
    return manifest


@dataclass(frozen=True)
class ModelRef:
    """A resolved model reference: where it is, what it predicts, and which version it is."""

    location: str
    """A local folder, or a hub id."""
    labels: tuple[str, ...]
    version: str
    temperature: float = 1.0
    has_onnx: bool = False
    manifest: Manifest | None = None


def resolve_model(reference: str, *, verify: bool = True) -> ModelRef:
    """Turn a config's ``model`` string into a ModelRef, verifying an artifact's checksums.

    ``reference`` is an artifact folder, a plain Hugging Face folder, a hub id, or
    ``registry:<root>/<role>`` (the version currently promoted for that role).
    """
    if reference.startswith("registry:"):
        from serving.registry import resolve_registry_reference

        reference = str(resolve_registry_reference(reference))
    folder = Path(reference).expanduser()
    if (folder / MANIFEST_NAME).exists():
        manifest = verify_artifact(folder) if verify else read_manifest(folder)
        return ModelRef(
            location=str(folder.resolve()),
            labels=tuple(manifest.labels),
            version=f"{manifest.name}:{manifest.version}",
            temperature=manifest.temperature,
            has_onnx=(folder / ONNX_NAME).exists(),
            manifest=manifest,
        )
    if folder.exists() and not (folder / "config.json").exists():
        raise ArtifactError(f"{folder} has neither {MANIFEST_NAME} nor a Hugging Face config.json")
    return _resolve_hugging_face(reference, folder)


def _resolve_hugging_face(reference: str, folder: Path) -> ModelRef:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(reference)
    except (OSError, ValueError) as error:
        raise ArtifactError(f"cannot load model {reference!r}: {error}") from None
    id2label = getattr(config, "id2label", None) or {}
    labels = tuple(id2label[i] for i in sorted(id2label))
    if len(labels) < 2:
        raise ArtifactError(f"model {reference!r} declares fewer than two labels (config.id2label)")
    if folder.exists():
        digest = hashlib.sha256((folder / "config.json").read_bytes()).hexdigest()[:8]
        version = f"{folder.resolve().name}:{digest}"
        has_onnx = (folder / ONNX_NAME).exists()
        location = str(folder.resolve())
    else:
        version = f"{reference}:{getattr(config, '_commit_hash', None) or 'hub'}"
        has_onnx = False
        location = reference
    return ModelRef(location=location, labels=labels, version=version, has_onnx=has_onnx)


def check_same_labels(student: ModelRef, teacher: ModelRef) -> None:
    """The cascade compares answers label by label: both roles must share one label list, in order."""
    if student.labels != teacher.labels:
        only_student = sorted(set(student.labels) - set(teacher.labels))
        only_teacher = sorted(set(teacher.labels) - set(student.labels))
        detail = (
            f"only the student has {only_student[:5]}, only the teacher has {only_teacher[:5]}"
            if only_student or only_teacher
            else "same labels in a different order"
        )
        raise ArtifactError(f"student and teacher label sets differ: {detail}")

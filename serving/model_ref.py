"""What a config's ``model`` string names, resolved: an artifact, a plain Hugging Face model, or a registry pointer.

Sits above ``serving.artifact`` (the folder format) and ``serving.registry`` (versions and pointers),
so that neither of those imports the other's caller.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serving.artifact import MANIFEST_NAME, ONNX_NAME, Manifest, read_manifest, verify_artifact
from serving.errors import ArtifactError
from serving.registry import resolve_registry_reference
from serving.vocabulary import REGISTRY_PREFIX


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
    if reference.startswith(REGISTRY_PREFIX):
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


def model_summary(ref: ModelRef) -> dict[str, Any]:
    """The fields of a role's summary (``/v1/models``, the ingress's view) that come from the model itself."""
    calibration = ref.manifest.calibration if ref.manifest is not None else None
    return {
        "model": ref.location,
        "version": ref.version,
        "labels": list(ref.labels),
        "temperature": ref.temperature,
        "calibration": {
            "signal": calibration.signal.value,
            "threshold": calibration.threshold,
            "target": calibration.target.model_dump(),
            "expected_escalation_rate": calibration.expected_escalation_rate,
        }
        if calibration is not None
        else None,
    }


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

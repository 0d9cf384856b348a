"""Model artifacts: a folder with weights, tokenizer and a ``manifest.json`` that says what it is.

The manifest carries a SHA-256 of every other file in the folder. Serving verifies them before it
loads anything, so a half-copied or tampered folder is refused rather than served. A plain Hugging
Face folder or hub id (no manifest) is accepted too: its labels come from ``config.id2label`` and
there is nothing to verify.
"""

from __future__ import annotations

import hashlib
import math
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from router import Signal
from router.deferral import DeferralRule, DeferralTarget
from serving.errors import ArtifactError
from serving.vocabulary import Role

MANIFEST_NAME = "manifest.json"
ONNX_NAME = "model.onnx"
ONNX_INT8_NAME = "model.int8.onnx"
MANIFEST_SCHEMA_VERSION = 1

Format = Literal["hf", "onnx", "onnx-int8"]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _nan_to_none(value: Any) -> Any:
    """The oracle and random routing have no threshold, and a share can be undefined: stored as null."""
    return None if isinstance(value, float) and math.isnan(value) else value


class CurvePoint(_Record):
    """One point of the cost–quality curve (``router.tradeoff.Point``), as stored."""

    threshold: float | None
    escalation_rate: float
    quality: float
    dollars_per_1000: float
    quality_loss_bound: float | None = None
    """Upper confidence bound of the gap to the teacher (a share), where calibration computed one."""

    _no_nan = field_validator("threshold", "quality_loss_bound", mode="before")(_nan_to_none)


class QualityCost(_Record):
    quality: float
    dollars_per_1000: float


class Expectation(_Record):
    """What calibration expects on live traffic at the chosen threshold, and the reference points beside it."""

    examples: int
    chosen: CurvePoint
    escalation_rate_95ci: tuple[float, float]
    quality_95ci: tuple[float, float]
    teacher_only: QualityCost
    student_only: QualityCost
    oracle: CurvePoint
    random_at_same_escalation: CurvePoint
    share_of_oracle_savings: float | None

    _no_nan = field_validator("share_of_oracle_savings", mode="before")(_nan_to_none)


class CalibrationTarget(_Record):
    kind: Literal["max_quality_loss", "max_escalation", "max_cost", "escalation_share"]
    value: float


class MeasuredCost(_Record):
    """Compute seconds per request measured at calibration, and the prices they were charged at."""

    student_seconds_per_request: float
    teacher_seconds_per_request: float
    student_dollars_per_hour: float
    teacher_dollars_per_hour: float


class ConfidenceHistogram(_Record):
    """Share of calibration requests per confidence bin: what live drift (PSI) is measured against."""

    edges: list[float]
    shares: list[float]


class LearnedRule(_Record):
    """A learned deferral rule's weights (``router.deferral.DeferralRule``), as stored."""

    feature_names: list[str]
    mean: list[float]
    scale: list[float]
    weights: list[float]
    bias: float
    target: Literal["teacher_better", "student_wrong"]

    def to_rule(self) -> DeferralRule:
        return DeferralRule(
            feature_names=tuple(self.feature_names),
            mean=tuple(self.mean),
            scale=tuple(self.scale),
            weights=tuple(self.weights),
            bias=self.bias,
            target=DeferralTarget(self.target),
        )

    @classmethod
    def from_rule(cls, rule: DeferralRule) -> LearnedRule:
        return cls.model_validate(rule.as_dict())


class RuleChoice(_Record):
    """Why calibration kept the rule it kept: each candidate's cost at the target on the selection part."""

    compared_on: int
    """Calibration texts every candidate was judged on (a learned rule's scores out of fold: cross-fitted)."""
    dollars_per_1000: dict[str, float | None]
    """Per candidate (a closed-form signal or ``learned``): cost at the target, None where it was not met."""
    kept: str


class MiddleStage(_Record):
    """The middle model of a chain (student → middle → teacher), as ``cascade calibrate --middle`` chose it.

    Its rule (``router.stages``) decides, for the texts the student escalated, whether its answer stands.
    """

    model: str
    """The middle model's name and version the chain was calibrated with (the gateway checks it)."""
    kind: Literal["max_prob", "agreement", "learned"]
    threshold: float = Field(ge=0)
    temperature: float = Field(gt=0)
    rule: LearnedRule | None = None
    seconds_per_request: float = Field(ge=0)
    dollars_per_hour: float = Field(ge=0)
    expected_served_share: tuple[float, float, float]
    """Share of calibration texts answered by the student, the middle model and the teacher."""
    compared: dict[str, float | None] = Field(default_factory=dict)
    """Cost per 1,000 at the target of each rule combination tried, and of ``student → teacher`` alone."""


class Calibration(_Record):
    """The cascade rule ``cascade calibrate`` chose for a student, stored in its manifest.

    The gateway serves with it unless the config's ``cascade`` section says otherwise
    (``serving.policy.policy_in_force``).
    """

    signal: Signal
    threshold: float = Field(ge=0)
    target: CalibrationTarget
    quality_measure: Literal["accuracy", "agreement_with_teacher"]
    expected: Expectation
    cost_model: MeasuredCost
    reference_confidence: ConfidenceHistogram | None = None
    confidence: float | None = None
    """One-sided confidence of the quality-loss bound the threshold was chosen on (None: point estimate)."""
    rule: LearnedRule | None = None
    """The learned rule's weights when ``signal`` is ``learned``."""
    rule_choice: RuleChoice | None = None
    middle: MiddleStage | None = None
    """Set for a chain of three: the middle model's rule. ``signal``/``threshold`` are then the student's
    stage, and ``expected.chosen.escalation_rate`` is the share that reaches the teacher."""

    @property
    def expected_escalation_rate(self) -> float:
        return self.expected.chosen.escalation_rate


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
    calibration: Calibration | None = None
    """Set by ``cascade calibrate``: signal, threshold, target, expectations, reference confidences."""
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    files: dict[str, str] = Field(default_factory=dict)

    @field_validator("calibration", mode="before")
    @classmethod
    def _uncalibrated(cls, value: Any) -> Any:
        return value or None  # manifests written before the typed record stored {} for "not calibrated"


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

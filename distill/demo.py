"""The embedded demo pair: a teacher fine-tuned from the packaged MiniLM, and a student distilled from it.

Built offline on first use from the demo dataset the project ships (``distill/demo_data``), cached under
``$CASCADE_HOME/demo/<recipe>`` and reused by later runs. The recipe key covers the data and the
training settings, so a change to either builds a fresh pair instead of serving a stale one.

Calibration, chosen so that the demo shows the cascade: both models are about 98% right on the
48-row demo dev set and tie there, so a quality target would pick τ = 0 and never escalate. The demo
instead escalates the least confident tenth of traffic (``escalation_share`` 0.1): in-domain texts
the student is sure of stay with it, and a text unlike the training data ("asdf qwerty") goes to the
teacher. Both temperatures are fitted on the dev set, so both roles report calibrated confidences.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from distill.build import BuildOptions, distill_student, finetune_teacher
from distill.calibrate import calibrate_artifacts, fit_teacher_temperature
from distill.training import TrainSettings
from router.tradeoff import Target
from serving.artifact import MANIFEST_NAME
from serving.constants import cascade_home

logger = logging.getLogger("cascade.demo")

DEMO_DATA = Path(__file__).parent / "demo_data"
RECIPE_VERSION = 3
TEACHER_TRAINING = TrainSettings(epochs=8, learning_rate=2e-4, batch_size=16, patience=3, seed=0)
STUDENT_TRAINING = TrainSettings(
    epochs=12, learning_rate=3e-4, batch_size=16, temperature=2.0, alpha=0.5, patience=4, seed=0
)
STUDENT_LAYERS = (0, 5)
DEMO_TARGET: Target = "escalation_share"
DEMO_ESCALATION_SHARE = 0.10  # the least confident tenth of traffic goes to the teacher (see the docstring)
MAX_LENGTH = 32


@dataclass(frozen=True)
class DemoPair:
    teacher: Path
    student: Path


def _recipe_key() -> str:
    digest = hashlib.sha256()
    for name in ("train.jsonl", "dev.jsonl"):
        digest.update((DEMO_DATA / name).read_bytes())
    settings = {
        "recipe": RECIPE_VERSION,
        "teacher": asdict(TEACHER_TRAINING),
        "student": asdict(STUDENT_TRAINING),
        "layers": STUDENT_LAYERS,
        "max_length": MAX_LENGTH,
        "calibration": [DEMO_TARGET, DEMO_ESCALATION_SHARE],
    }
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()[:12]


def demo_pair_location(root: Path | None = None) -> DemoPair:
    base = (root or cascade_home()) / "demo" / _recipe_key()
    return DemoPair(teacher=base / "teacher", student=base / "student")


def ensure_demo_pair(root: Path | None = None) -> DemoPair:
    """Return the cached demo pair, building whichever half is missing (under a minute on 2 idle cores)."""
    pair = demo_pair_location(root)
    train, dev = DEMO_DATA / "train.jsonl", DEMO_DATA / "dev.jsonl"
    if not (pair.teacher / MANIFEST_NAME).exists():
        logger.warning("building the demo teacher in %s (first run only)", pair.teacher)
        finetune_teacher(
            train,
            pair.teacher,
            BuildOptions(name="demo-teacher", max_length=MAX_LENGTH, train=TEACHER_TRAINING, overwrite=True),
            dev_path=dev,
        )
        fit_teacher_temperature(pair.teacher, dev)
    if not (pair.student / MANIFEST_NAME).exists():
        logger.warning("distilling the demo student in %s (first run only)", pair.student)
        distill_student(
            pair.teacher,
            train,
            pair.student,
            BuildOptions(name="demo-student", max_length=MAX_LENGTH, train=STUDENT_TRAINING, overwrite=True),
            layers=STUDENT_LAYERS,
            dev_path=dev,
        )
        # The gateway then serves with the calibrated temperature, signal and threshold.
        calibrate_artifacts(str(pair.teacher), str(pair.student), dev, DEMO_TARGET, DEMO_ESCALATION_SHARE)
    return pair

"""Which cascade rule is in force: the one place that weighs the config against the student's calibration.

Order, per field: the config's ``cascade`` section when it sets the field, else the student's
manifest as ``cascade calibrate`` wrote it, else the defaults in ``serving.constants``. The expected
escalation rate (for the "more escalation than calibrated" alert) and the drift reference (for PSI)
are published only when they describe the rule actually in force.
"""

from __future__ import annotations

from dataclasses import dataclass

from router import CascadePolicy, Signal
from serving import constants as c
from serving.artifact import Calibration, ConfidenceHistogram
from serving.config import CascadeSettings
from serving.errors import ConfigError


@dataclass(frozen=True)
class PolicyInForce:
    policy: CascadePolicy
    source: str
    """``calibration``, ``config`` or ``defaults``: where the signal and threshold came from."""
    expected_escalation_rate: float | None
    """What calibration measured for this very rule; None when the config changed signal or threshold."""
    drift_reference: ConfidenceHistogram | None
    """The calibration's confidence histogram; None unless the live signal is the calibrated one."""


def policy_in_force(
    settings: CascadeSettings, calibration: Calibration | None, student_temperature: float
) -> PolicyInForce:
    """The rule the gateway serves with, from its ``cascade`` settings and the student's calibration."""
    signal = settings.signal or (calibration.signal if calibration else Signal(c.DEFAULT_SIGNAL))
    if settings.threshold is not None:
        threshold = settings.threshold
    else:
        threshold = calibration.threshold if calibration else c.DEFAULT_THRESHOLD
    rule = None
    if signal is Signal.LEARNED:
        if calibration is None or calibration.rule is None:
            raise ConfigError(
                "cascade.signal: 'learned' needs a student calibrated with a learned rule "
                "(cascade calibrate --rule learned); the others are max_prob, margin, entropy"
            )
        rule = calibration.rule.to_rule()
    policy = CascadePolicy(
        threshold=threshold, signal=signal, temperature=settings.temperature or student_temperature, rule=rule
    )
    configured = settings.signal is not None or settings.threshold is not None
    if calibration is None:
        return PolicyInForce(policy, "config" if configured else "defaults", None, None)
    # PSI compares like with like: only when the live signal is the one the reference was taken with.
    same_signal = calibration.signal == policy.signal
    as_calibrated = same_signal and calibration.threshold == policy.threshold
    return PolicyInForce(
        policy=policy,
        source="calibration" if as_calibrated else "config",  # the config overrode what calibration chose
        expected_escalation_rate=calibration.expected_escalation_rate if as_calibrated else None,
        drift_reference=calibration.reference_confidence if same_signal else None,
    )

"""Which cascade rule is in force: the one place that weighs the config against the student's calibration.

Order, per field: the config's ``cascade`` section when it sets the field, else the student's
manifest as ``cascade calibrate`` wrote it, else the defaults in ``serving.constants``. The expected
escalation rate (for the "more escalation than calibrated" alert) and the drift reference (for PSI)
are published only when they describe the rule actually in force.

A chain of three (a ``middle`` role) takes its middle stage's rule from the student's calibration
only: the config must name the very middle model the chain was calibrated with, and a student
calibrated as a chain is not served without it (its threshold counts on the middle model's help).
"""

from __future__ import annotations

from dataclasses import dataclass

from router import CascadePolicy, Signal
from router.stages import StagePolicy
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
    middle: StagePolicy | None = None
    """The middle stage's rule in a chain of three; None for student → teacher."""


def middle_stage(calibration: Calibration | None, middle_version: str | None) -> StagePolicy | None:
    """The middle stage's rule, checked against the middle model the config serves (None: no middle)."""
    chain = calibration.middle if calibration is not None else None
    if middle_version is None:
        if chain is not None:
            raise ConfigError(
                f"middle: the student was calibrated as a chain through {chain.model}; add a middle section "
                "with that model, or calibrate the student without --middle"
            )
        return None
    if chain is None:
        raise ConfigError(
            "middle: the student's calibration is not a chain's; run cascade calibrate --middle <this middle model>"
        )
    if chain.model != middle_version:
        raise ConfigError(
            f"middle: the student's chain was calibrated with {chain.model}, the config serves {middle_version}; "
            "calibrate the chain again with this middle model"
        )
    rule = chain.rule.to_rule() if chain.rule is not None else None
    return StagePolicy(chain.kind, chain.threshold, chain.temperature, rule)


def policy_in_force(
    settings: CascadeSettings,
    calibration: Calibration | None,
    student_temperature: float,
    middle_version: str | None = None,
) -> PolicyInForce:
    """The rule the gateway serves with, from its ``cascade`` settings and the student's calibration.

    ``middle_version``: the version of the middle model the config serves, None without one.
    """
    middle = middle_stage(calibration, middle_version)
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
        return PolicyInForce(policy, "config" if configured else "defaults", None, None, middle)
    # PSI compares like with like: only when the live signal is the one the reference was taken with.
    same_signal = calibration.signal == policy.signal
    as_calibrated = same_signal and calibration.threshold == policy.threshold
    return PolicyInForce(
        policy=policy,
        source="calibration" if as_calibrated else "config",  # the config overrode what calibration chose
        expected_escalation_rate=calibration.expected_escalation_rate if as_calibrated else None,
        drift_reference=calibration.reference_confidence if same_signal else None,
        middle=middle,
    )

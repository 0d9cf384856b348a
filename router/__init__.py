"""Pure cascade policy: confidence signals and the escalation decision.

numpy only: no Ray, no torch, no I/O, so that every decision the gateway takes is unit-testable
and reusable offline (calibration, evaluation, load-test analysis).
"""

from router.policy import CascadePolicy, StudentVerdict
from router.signals import Signal, confidence, softmax

__all__ = ["CascadePolicy", "Signal", "StudentVerdict", "confidence", "softmax"]

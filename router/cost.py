"""The cost model: dollars per request from measured compute time and the price of the node it runs on.

A role's cost per request = (compute seconds per request) × (node price per hour) / 3600, where the
compute time is what one request actually used of a node (a batch's time shared among its requests).
A cascade request pays the student always and the teacher when it escalates.

Default prices (USD per node-hour, on-demand, us-east-1, public AWS EC2 price list, 2024):
``g5.xlarge`` (1× NVIDIA A10G, 4 vCPU) 1.006 for the teacher's GPU node, ``c7i.large`` (2 vCPU)
0.08925 for a student CPU node. Override both in the config for your own cloud or hardware.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_GPU_NODE_DOLLARS_PER_HOUR = 1.006
DEFAULT_CPU_NODE_DOLLARS_PER_HOUR = 0.08925


def dollars_for(seconds: float, dollars_per_hour: float) -> float:
    """What ``seconds`` of a node's compute cost at ``dollars_per_hour``."""
    return seconds * dollars_per_hour / 3600


@dataclass(frozen=True)
class CostModel:
    student_seconds_per_request: float
    teacher_seconds_per_request: float
    student_dollars_per_hour: float = DEFAULT_CPU_NODE_DOLLARS_PER_HOUR
    teacher_dollars_per_hour: float = DEFAULT_GPU_NODE_DOLLARS_PER_HOUR

    def __post_init__(self) -> None:
        for name in (
            "student_seconds_per_request",
            "teacher_seconds_per_request",
            "student_dollars_per_hour",
            "teacher_dollars_per_hour",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def student_dollars(self) -> float:
        return dollars_for(self.student_seconds_per_request, self.student_dollars_per_hour)

    @property
    def teacher_dollars(self) -> float:
        return dollars_for(self.teacher_seconds_per_request, self.teacher_dollars_per_hour)

    def cascade_dollars(self, escalation_rate: float) -> float:
        """Mean dollars per request when a share ``escalation_rate`` of requests also runs the teacher."""
        return self.student_dollars + escalation_rate * self.teacher_dollars

    def per_thousand(self, dollars_per_request: float) -> float:
        return 1000 * dollars_per_request


class SavingsCarry:
    """Turns signed per-request savings into increments of a counter that may never go down.

    A request the student answers saves the teacher's cost minus its own; one that escalates costs a
    little more than the teacher alone would have (it paid the student too), a negative saving. The
    negative part is carried and netted against the next positive savings, so the counter's total is
    the true net saving plus at most the carry still pending (``pending``, never positive).
    """

    def __init__(self) -> None:
        self.pending = 0.0

    def add(self, saving: float) -> float:
        """Record one saving; return what to add to the counter now (>= 0)."""
        self.pending += saving
        if self.pending <= 0.0:
            return 0.0
        emitted, self.pending = self.pending, 0.0
        return emitted

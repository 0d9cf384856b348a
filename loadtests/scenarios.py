"""Load shapes of the Locust scenarios, apart from Locust (importing Locust monkey-patches the process)."""

from __future__ import annotations

import random


def scenario_stages(scenario: str, users: int, duration: float) -> list[tuple[float, int]]:
    """(end time in s, users) per stage of a scenario."""
    if scenario == "steady" or scenario == "drift":
        return [(duration, users)]
    if scenario == "ramp":  # to saturation: 1/8 of the users more every 1/8 of the time
        return [(duration * (i + 1) / 8, max(1, users * (i + 1) // 8)) for i in range(8)]
    if scenario == "spike":  # base, five times the users for a fifth of the time, base again
        return [(duration * 0.4, users), (duration * 0.6, users * 5), (duration, users)]
    raise ValueError(f"CASCADE_SCENARIO must be steady, ramp, spike or drift, got {scenario!r}")


def send_order(count: int) -> list[int]:
    """The one shuffled order in which the load sends a dataset's texts, the same in every run.

    Benchmarks that time a model offline on "the traffic" use it too: the dataset files group texts
    by label, and a batch of neighbours pads less than a batch of what the load really sends
    (BANKING77's teacher: 175 texts/s in file order, 164 in this order, at batch 32).
    """
    order = list(range(count))
    random.Random(0).shuffle(order)
    return order


__all__ = ["scenario_stages", "send_order"]

"""Load shapes of the Locust scenarios, apart from Locust (importing Locust monkey-patches the process)."""

from __future__ import annotations


def scenario_stages(scenario: str, users: int, duration: float) -> list[tuple[float, int]]:
    """(end time in s, users) per stage of a scenario."""
    if scenario == "steady" or scenario == "drift":
        return [(duration, users)]
    if scenario == "ramp":  # to saturation: 1/8 of the users more every 1/8 of the time
        return [(duration * (i + 1) / 8, max(1, users * (i + 1) // 8)) for i in range(8)]
    if scenario == "spike":  # base, five times the users for a fifth of the time, base again
        return [(duration * 0.4, users), (duration * 0.6, users * 5), (duration, users)]
    raise ValueError(f"CASCADE_SCENARIO must be steady, ramp, spike or drift, got {scenario!r}")


__all__ = ["scenario_stages"]

"""Load and latency measurements that drive a gateway over HTTP only, like any client."""

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until_settled(
    read: Callable[[], T], caught_up: Callable[[T], bool], *, deadline_s: float, every_s: float
) -> T:
    """Poll ``read`` until ``caught_up`` holds and two reads ``every_s`` apart agree; at the deadline, the last read.

    For exported metrics: Ray's processes report every second or two, later still on a busy
    machine, and work that ends after its request (a shadow call) is counted later again. Waiting
    for convergence replaces a fixed sleep; ``every_s`` must exceed one report interval.
    """
    end = time.monotonic() + deadline_s
    previous: T | None = None
    while True:
        current = read()
        if (caught_up(current) and current == previous) or time.monotonic() > end:
            return current
        previous = current
        time.sleep(every_s)

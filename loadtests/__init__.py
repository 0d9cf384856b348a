"""Load and latency measurements that drive a gateway over HTTP only, like any client."""

import socket
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a gateway or metrics endpoint a measurement starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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

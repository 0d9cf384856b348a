"""Free TCP ports on 127.0.0.1 that stay free until their user binds them.

The obvious way, bind port 0 and close, returns a port from the kernel's ephemeral range
(``/proc/sys/net/ipv4/ip_local_port_range``, 32768–60999 on Linux). That range is also where every
outgoing connection takes its source port, so in the seconds before Ray's HAProxy binds the port, a
load generator's or Ray's own connections can take it: seen in CI as HAProxy's "cannot bind socket
(Address already in use)". A port below the ephemeral range is never handed out that way; only a
process that names it can take it. Ray's worker ports (10002–19999 by default) are avoided too.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_LOWEST = 20_000
"""Above Ray's default worker ports (``--min-worker-port`` 10002 to ``--max-worker-port`` 19999)."""
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_FALLBACK_EPHEMERAL_START = 32_768
"""Linux's default; macOS and the IANA range start at 49152, so this is below both."""
_ATTEMPTS = 200

_random = random.SystemRandom()  # not the global generator, which training code seeds
_handed_out: set[int] = set()  # not handed out twice by this process before the first user binds it


def _ephemeral_start() -> int:
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return _FALLBACK_EPHEMERAL_START


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_local_port() -> int:
    """A TCP port free on 127.0.0.1 now, outside the ephemeral range (see the module's docstring).

    Falls back to a kernel-chosen port when the range below the ephemeral one is too small or full.
    """
    highest = min(_ephemeral_start(), _FALLBACK_EPHEMERAL_START) - 1
    if highest - _LOWEST >= 1_000:
        for _ in range(_ATTEMPTS):
            port = _random.randint(_LOWEST, highest)
            if port not in _handed_out and _bindable(port):
                _handed_out.add(port)
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


__all__ = ["free_local_port"]

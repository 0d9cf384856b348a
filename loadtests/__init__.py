"""Load and latency measurements that drive a gateway over HTTP only, like any client."""

import socket


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a gateway or metrics endpoint a measurement starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port

"""Load and latency measurements that drive a gateway over HTTP only, like any client."""

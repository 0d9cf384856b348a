"""The framework's floor: a Ray Serve application that reads the request and answers a fixed body.

    python -m benchmarks.noop_ray_app --port 8097 [--ingress haproxy|proxy]

A private local Ray started the way ``cascade serve`` starts its own (our Ray settings, token
authentication, the same HTTP ingress), one ingress replica with the gateway's
``max_ongoing_requests``, no model and no logic. What it answers per second is what Ray Serve itself
allows on this machine; ``cascade loadtest`` shows the gateway beside it. Ctrl-C (SIGINT) stops it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import threading
from typing import Any, cast

from serving import constants as c
from serving.lifecycle import choose_ingress

ANSWER = {"results": [{"label": "noop", "confidence": 1.0, "served_by": "student", "escalated": False}]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ingress", choices=["haproxy", "proxy"], default="haproxy")
    args = parser.parse_args()

    c.keep_local_ray_on_loopback()
    c.apply_ray_environment_defaults()
    folder = choose_ingress(args.ingress)

    import ray
    from ray import serve
    from ray.serve import Deployment
    from starlette.requests import Request

    @serve.deployment(max_ongoing_requests=64, max_queued_requests=1024)
    class Noop:
        async def __call__(self, request: Request) -> dict[str, Any]:
            await request.body()
            return ANSWER

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    ray.init(address="local", include_dashboard=False, log_to_driver=False, num_cpus=os.cpu_count())
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        serve.run(cast(Deployment, Noop).bind(), name="noop", route_prefix="/", blocking=False)
        print(f"no-op Ray Serve app on http://127.0.0.1:{args.port} ({args.ingress})", flush=True)
        stop.wait()
    finally:
        serve.delete("noop")
        ray.shutdown()
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()

"""The swap: notice a promotion (or rollback) in the registry and put the new model in service in place.

``follow_registry`` polls the pointer of every role served as ``registry:<root>/<role>``; when one
moves it re-applies the application with the same deployments and a new ``user_config``, so Ray
Serve calls ``reconfigure`` on the running replicas (``serving.replica.swap_runner``): the new model
loads and warms up beside the old one and takes over only when ready. No replica restarts and no
request fails. A promoted model that cannot serve (other labels, a bad checksum) is refused and the
old one keeps serving.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from serving.config import GatewayConfig
from serving.errors import CascadeError
from serving.registry import Registry
from serving.vocabulary import REGISTRY_PREFIX

logger = logging.getLogger("cascade.swap")


def registry_locations(config: GatewayConfig) -> dict[str, str]:
    """The folder each ``registry:`` role points at now (cheap: reads the pointer, hashes nothing)."""
    locations: dict[str, str] = {}
    for role in config.roles:
        model = config.model_settings(role).model
        if model.startswith(REGISTRY_PREFIX):
            location = Path(model.removeprefix(REGISTRY_PREFIX)).expanduser()
            locations[role] = str(Registry(location.parent).current_path(location.name))
    return locations


def follow_registry(config: GatewayConfig, stop: threading.Event, *, app_name: str) -> None:
    """Until ``stop``: poll the registry and redeploy ``app_name`` in place when a pointer moves.

    Without ``registry:`` models it just waits for ``stop``.
    """
    from ray import serve

    from serving.application import build_app

    deployed = registry_locations(config)
    while not stop.wait(config.reload.poll_s if deployed else None):
        current = registry_locations(config)
        if current != deployed:
            print(f"registry change: {deployed} → {current}; swapping in place", flush=True)
            try:
                serve.run(build_app(config), name=app_name, route_prefix="/", blocking=False)
                deployed = current
            except CascadeError as error:  # e.g. a promoted student with other labels: keep serving
                logger.error("not swapped: %s", error)
                print(f"not swapped: {error}", flush=True)


__all__ = ["follow_registry", "registry_locations"]

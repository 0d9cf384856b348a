"""The swap: every process that serves a ``registry:`` model watches that role's pointer itself.

A model replica swaps its model in place when the pointer moves (``serving.replica``); the ingress
updates its view of the roles, versions, labels and the student's calibration (``serving.gateway``),
after the role's replicas answer with the new version. Nothing outside the application has to notice a
promotion, so it is served the same under ``cascade serve``, ``serve run`` and a KubeRay RayService.
A replica that Ray restarts starts from the application's ``user_config`` (the model at deploy time)
and catches up on its first look at the pointer. A promoted model that cannot serve (other labels,
a bad checksum, a chain calibrated for another middle model) is refused, logged, and the old one
keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from serving.errors import CascadeError
from serving.registry import Registry
from serving.vocabulary import REGISTRY_PREFIX

logger = logging.getLogger("cascade.swap")


def registry_location(reference: str) -> str | None:
    """The folder a ``registry:<root>/<role>`` reference points at now (reads the pointer, hashes nothing)."""
    location = Path(reference.removeprefix(REGISTRY_PREFIX)).expanduser()
    current = Registry(location.parent).current_path(location.name)
    return str(current) if current is not None else None


class RegistryWatcher:
    """Polls one ``registry:`` reference; calls ``on_change(folder)`` when it points somewhere new.

    ``seen`` is the folder in service. A change that ``on_change`` refuses (a ``CascadeError``) is
    not retried until the pointer moves again: the log says why once, and the old model serves on.
    """

    def __init__(
        self,
        reference: str,
        seen: str,
        poll_s: float,
        on_change: Callable[[str], Awaitable[None]],
        name: str,
    ) -> None:
        self.reference, self.seen, self.poll_s = reference, seen, poll_s
        self._on_change, self._name = on_change, name
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"registry-watch-{self._name}")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def check(self) -> bool:
        """One look at the pointer; True when it moved and the change was taken."""
        try:
            location = await asyncio.to_thread(registry_location, self.reference)
        except (OSError, CascadeError) as error:
            logger.warning("%s: cannot read %s: %s", self._name, self.reference, error)
            return False
        if location is None or location == self.seen:
            return False
        previous, self.seen = self.seen, location  # refused or taken, this pointer is not tried again
        try:
            await self._on_change(location)
        except CascadeError as error:
            logger.error("%s: not swapped to %s (still serving %s): %s", self._name, location, previous, error)
            return False
        logger.warning("%s: now serving %s", self._name, location)
        return True

    async def _run(self) -> None:
        while True:
            await self.check()
            await asyncio.sleep(self.poll_s)


def watch(
    watchers: dict[str, RegistryWatcher],
    key: str,
    reference: str | None,
    seen: str,
    poll_s: float,
    on_change: Callable[[str], Awaitable[None]],
) -> None:
    """Keep ``watchers[key]`` in line with a role's reference: start, restart on a new setting, or stop."""
    current = watchers.get(key)
    if current is not None and (current.reference, current.poll_s) == (reference, poll_s):
        current.seen = seen
        return
    if current is not None:
        current.stop()
        del watchers[key]
    if reference is not None and reference.startswith(REGISTRY_PREFIX):
        watchers[key] = RegistryWatcher(reference, seen, poll_s, on_change, key)
        watchers[key].start()


__all__ = ["RegistryWatcher", "registry_location", "watch"]

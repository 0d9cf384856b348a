"""Concurrent callers' texts for one role, sent as one call while earlier calls are in flight.

Used twice. Towards a remote role (``serving.role_calls``): a handle call to another replica costs
milliseconds of CPU on both sides, whatever it carries (measured on route ``teacher``, one text per
request: 4.1 ms in the ingress and about 4 ms besides the model in the teacher's replica, per call),
so escalations and teacher-only requests that arrive a text or a few at a time share calls. And as
the model's own batcher (``serving.replica.ModelRunner``, one call in flight: the batch the model
runs), in place of Ray Serve's ``@serve.batch``, whose generic argument handling and queue cost the
colocated student's ingress about a quarter of its per-request CPU one request at a time
(``benchmarks/handler_cost.py``: 950 -> 700 µs).

A ``Coalescer`` sends a caller's texts at once while fewer than ``in_flight`` calls are out; beyond
that, callers wait for the next free slot, whose call takes everything that waited (up to
``max_texts``). A lone request is never held, unless ``wait_s`` asks a call to wait that long for
company (Ray's ``batch_wait_timeout_s``) or until ``max_texts`` have arrived. Under load, calls grow
instead of multiplying.

Pure asyncio, no Ray: ``send`` is whatever reaches the role. What a caller is owed stays its own:
its share of the logits and of the compute seconds; a caller whose deadline passed while it waited
gets ``DeadlinePassed`` without its texts being computed; and, should a shared call fail because of
its texts (``send`` raising anything but ``shared_errors``), each caller is retried alone so that
only the one whose texts broke the model fails.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

Answer = tuple[np.ndarray, float]
"""Logits for the texts sent, and the compute seconds they used."""

Send = Callable[[list[str], float | None], Awaitable[Answer]]
"""One call to the role: texts and a deadline (``time.time()`` seconds, None: none)."""


class DeadlinePassed(TimeoutError):
    """The caller stopped waiting before its call was sent: its texts are not computed."""


@dataclass
class _Waiting:
    texts: list[str]
    deadline: float | None
    future: asyncio.Future[Answer]


class Coalescer:
    """One role's calls from this process: at most ``in_flight`` out at once, later callers merged.

    ``max_texts``, ``in_flight`` and ``wait_s`` may be changed at any time (a reconfigure); they apply
    to the next call.
    """

    def __init__(
        self,
        send: Send,
        max_texts: int,
        in_flight: int,
        shared_errors: tuple[type[BaseException], ...] = (),
        wait_s: float = 0.0,
    ) -> None:
        self._send = send
        self.max_texts, self.in_flight, self.wait_s = max_texts, in_flight, wait_s
        self._shared_errors = shared_errors
        self._running = 0
        self._waiting: deque[_Waiting] = deque()
        self._waiting_texts = 0
        self._until_full: list[asyncio.Future[None]] = []  # slots gathering texts for ``wait_s``
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def calls_out(self) -> int:
        """Calls sent (or gathering texts for ``wait_s``) and not yet answered."""
        return self._running

    async def call(self, texts: list[str], deadline: float | None) -> Answer:
        """Logits for ``texts`` (at most ``max_texts`` of them), alone now or merged into the next call."""
        if self._running < self.in_flight and not self._waiting and self.wait_s <= 0:
            if deadline is not None and deadline <= time.time():
                raise _late()
            self._running += 1
            try:
                return await self._send(texts, deadline)
            finally:
                self._running -= 1
                self._start_waiting_calls()
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(texts, deadline, future))
        self._waiting_texts += len(texts)
        if self._waiting_texts >= self.max_texts:
            for until_full in self._until_full:
                if not until_full.done():
                    until_full.set_result(None)
        self._start_waiting_calls()
        return await future  # a caller that stops waiting cancels only its future; the call goes on for the others

    def _start_waiting_calls(self) -> None:
        while self._waiting and self._running < self.in_flight:
            self._running += 1
            task = asyncio.create_task(self._next_call())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _next_call(self) -> None:
        """One slot's call: after ``wait_s`` for company (unless a full call's texts wait), whoever waits."""
        try:
            if self.wait_s > 0 and self._waiting_texts < self.max_texts:
                await self._gather_texts()
            group = self._take_group()
            if group:
                await self._send_group(group)
        finally:
            self._running -= 1
            self._start_waiting_calls()

    async def _gather_texts(self) -> None:
        """Until ``max_texts`` texts wait or ``wait_s`` has passed."""
        until_full: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._until_full.append(until_full)
        try:
            async with asyncio.timeout(self.wait_s):
                await until_full
        except TimeoutError:
            pass
        finally:
            self._until_full.remove(until_full)

    def _take_group(self) -> list[_Waiting]:
        """The callers at the front of the queue whose texts fit one call; gone and late ones skipped."""
        group: list[_Waiting] = []
        count = 0
        now = time.time()
        while self._waiting:
            waiting = self._waiting[0]
            if group and count + len(waiting.texts) > self.max_texts:
                break
            self._waiting.popleft()
            self._waiting_texts -= len(waiting.texts)
            if waiting.future.done():  # its caller stopped waiting (a timeout, a client gone)
                continue
            if waiting.deadline is not None and waiting.deadline <= now:
                waiting.future.set_exception(_late())
                continue
            group.append(waiting)
            count += len(waiting.texts)
        return group

    async def _send_group(self, group: list[_Waiting]) -> None:
        try:
            texts = [text for waiting in group for text in waiting.texts]
            deadlines = [waiting.deadline for waiting in group]
            deadline = None if None in deadlines else max(d for d in deadlines if d is not None)
            try:
                logits, seconds = await self._send(texts, deadline)
            except self._shared_errors as error:
                _fail(group, error)
            except Exception as error:  # noqa: BLE001 - maybe one caller's texts: each retried alone below
                if len(group) == 1:
                    _fail(group, error)
                else:
                    await asyncio.gather(*(self._send_alone(waiting) for waiting in group))
            else:
                bounds = np.cumsum([len(waiting.texts) for waiting in group])[:-1]
                for waiting, part in zip(group, np.split(logits, bounds), strict=True):
                    if not waiting.future.done():
                        waiting.future.set_result((part, seconds * len(part) / len(texts)))
        except asyncio.CancelledError:
            for waiting in group:
                waiting.future.cancel()
            raise

    async def _send_alone(self, waiting: _Waiting) -> None:
        try:
            answer = await self._send(waiting.texts, waiting.deadline)
        except Exception as error:  # noqa: BLE001 - handed to this caller, who raises it
            _fail([waiting], error)
        else:
            if not waiting.future.done():
                waiting.future.set_result(answer)


def _late() -> DeadlinePassed:
    return DeadlinePassed("the caller's deadline passed before its call was sent")


def _fail(group: list[_Waiting], error: BaseException) -> None:
    for waiting in group:
        if not waiting.future.done():
            waiting.future.set_exception(error)


__all__ = ["Answer", "Coalescer", "DeadlinePassed", "Send"]

"""Calls to a remote role from concurrent requests: sent at once while a slot is free, merged beyond it."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np
import pytest

from serving.coalescing import Answer, Coalescer, DeadlinePassed

DEADLINE_S = 5.0


def in_event_loop(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """A coroutine test, run to its end in a loop of its own."""

    @functools.wraps(test)
    def run() -> None:
        asyncio.run(test())

    return run


class Role:
    """A remote role in this process: records every call, and answers each only when told to."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], float | None]] = []
        self.gates: list[asyncio.Event] = []
        self.hold = False

    async def send(self, texts: list[str], deadline: float | None) -> Answer:
        self.calls.append((list(texts), deadline))
        if self.hold:
            gate = asyncio.Event()
            self.gates.append(gate)
            await gate.wait()
        if any(text.startswith("bad") for text in texts):
            raise ValueError("the tokenizer choked")
        # One row per text, its value the text's number: each caller can tell its own rows.
        return np.array([[float(text.split("-")[1])] for text in texts]), 0.01 * len(texts)

    async def until_calls(self, count: int) -> None:
        async with asyncio.timeout(DEADLINE_S):
            while len(self.calls) < count:
                await asyncio.sleep(0)


def rows(answer: Answer) -> list[float]:
    return [float(value) for value in answer[0][:, 0]]


async def slot_taken(
    first: str, deadline: float | None = None, max_texts: int = 8
) -> tuple[Role, Coalescer, asyncio.Task[Answer]]:
    """A role that holds its calls, and a one-slot coalescer whose slot a call of ``first`` has taken."""
    role = Role()
    role.hold = True
    coalescer = Coalescer(role.send, max_texts=max_texts, in_flight=1)
    call = asyncio.create_task(coalescer.call([first], deadline))
    await role.until_calls(1)
    return role, coalescer, call


@in_event_loop
async def test_a_lone_caller_is_sent_at_once_and_alone() -> None:
    role = Role()
    coalescer = Coalescer(role.send, max_texts=8, in_flight=1)
    deadline = time.time() + 60  # time.time() seconds, passed on as it is
    answer = await coalescer.call(["t-1", "t-2"], deadline)
    assert role.calls == [(["t-1", "t-2"], deadline)]
    assert rows(answer) == [1.0, 2.0] and answer[1] == pytest.approx(0.02)


@in_event_loop
async def test_callers_beyond_the_slots_share_the_next_call_each_getting_its_own_rows() -> None:
    later = time.time() + 60  # deadlines are time.time() seconds
    role, coalescer, first = await slot_taken("t-1", later)
    waiting = [asyncio.create_task(coalescer.call([f"t-{i}", f"t-{i}0"], later + i)) for i in (2, 3, 4)]
    for _ in range(3):
        await asyncio.sleep(0)
    assert len(role.calls) == 1 and coalescer.calls_out == 1  # the slot is taken: they wait
    role.gates[0].set()
    await role.until_calls(2)
    role.gates[1].set()
    answers = await asyncio.gather(first, *waiting)
    assert role.calls[1] == (["t-2", "t-20", "t-3", "t-30", "t-4", "t-40"], later + 4)  # one call, the latest deadline
    assert [rows(answer) for answer in answers] == [[1.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0]]
    assert [answer[1] for answer in answers[1:]] == pytest.approx([0.02, 0.02, 0.02])  # the call's 0.06 s, shared
    assert coalescer.calls_out == 0


@in_event_loop
async def test_a_merged_call_holds_at_most_max_texts_and_no_caller_is_split() -> None:
    role, coalescer, first = await slot_taken("t-0", max_texts=4)
    waiting = [asyncio.create_task(coalescer.call([f"t-{i}", f"t-{i}"], None)) for i in (1, 2, 3)]
    await asyncio.sleep(0)
    for call_number in (1, 2):
        role.gates[call_number - 1].set()
        await role.until_calls(call_number + 1)
    role.gates[2].set()
    await asyncio.gather(first, *waiting)
    assert [texts for texts, _ in role.calls] == [["t-0"], ["t-1", "t-1", "t-2", "t-2"], ["t-3", "t-3"]]
    assert all(deadline is None for _, deadline in role.calls)


@in_event_loop
async def test_a_caller_that_stopped_waiting_is_not_sent() -> None:
    role, coalescer, first = await slot_taken("t-1")
    gone = asyncio.create_task(coalescer.call(["t-2"], None))
    kept = asyncio.create_task(coalescer.call(["t-3"], None))
    await asyncio.sleep(0)
    gone.cancel()  # a client that left, or its request's deadline
    await asyncio.sleep(0)
    role.gates[0].set()
    await role.until_calls(2)
    role.gates[1].set()
    assert rows(await kept) == [3.0] and rows(await first) == [1.0]
    assert [texts for texts, _ in role.calls] == [["t-1"], ["t-3"]]
    assert gone.cancelled()


@in_event_loop
async def test_texts_that_break_the_model_fail_only_their_caller() -> None:
    role, coalescer, first = await slot_taken("t-1")
    good = asyncio.create_task(coalescer.call(["t-2"], None))
    bad = asyncio.create_task(coalescer.call(["bad-3"], None))
    await asyncio.sleep(0)
    role.hold = False
    role.gates[0].set()
    assert rows(await good) == [2.0]
    with pytest.raises(ValueError, match="tokenizer"):
        await bad
    await first
    # The shared call failed, then each of its callers was sent alone.
    assert [texts for texts, _ in role.calls] == [["t-1"], ["t-2", "bad-3"], ["t-2"], ["bad-3"]]


@in_event_loop
async def test_an_error_about_the_call_reaches_every_caller_without_retries() -> None:
    class Busy(Exception):
        pass

    calls: list[list[str]] = []
    release = asyncio.Event()

    async def send(texts: list[str], deadline: float | None) -> Answer:
        calls.append(texts)
        await release.wait()
        raise Busy("queue full")

    coalescer = Coalescer(send, max_texts=8, in_flight=1, shared_errors=(Busy,))
    tasks = [asyncio.create_task(coalescer.call([f"t-{i}"], None)) for i in range(3)]
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(result, Busy) for result in results)
    assert calls == [["t-0"], ["t-1", "t-2"]]
    assert coalescer.calls_out == 0


@in_event_loop
async def test_more_slots_send_more_calls_at_once() -> None:
    role = Role()
    role.hold = True
    coalescer = Coalescer(role.send, max_texts=8, in_flight=2)
    tasks = [asyncio.create_task(coalescer.call([f"t-{i}"], None)) for i in range(5)]
    await role.until_calls(2)
    assert coalescer.calls_out == 2 and [texts for texts, _ in role.calls] == [["t-0"], ["t-1"]]
    for gate in list(role.gates):
        gate.set()
    await role.until_calls(3)
    role.hold = False
    for gate in role.gates[2:]:
        gate.set()
    assert [rows(answer) for answer in await asyncio.gather(*tasks)] == [[float(i)] for i in range(5)]
    assert sum(len(texts) for texts, _ in role.calls) == 5 and len(role.calls) < 5


@in_event_loop
async def test_a_caller_whose_deadline_passed_while_it_waited_gets_deadline_passed_unsent() -> None:
    role, coalescer, first = await slot_taken("t-1")
    late_deadline = time.time() + 0.05
    late = asyncio.create_task(coalescer.call(["t-2"], late_deadline))
    kept = asyncio.create_task(coalescer.call(["t-3"], time.time() + 60))
    async with asyncio.timeout(DEADLINE_S):
        while time.time() <= late_deadline:  # the first call still holds the slot
            await asyncio.sleep(0.01)
    role.hold = False
    role.gates[0].set()
    with pytest.raises(DeadlinePassed):
        await late
    assert rows(await kept) == [3.0] and rows(await first) == [1.0]
    assert [texts for texts, _ in role.calls] == [["t-1"], ["t-3"]]


@in_event_loop
async def test_a_wait_holds_a_lone_caller_until_a_full_call_of_texts_waits() -> None:
    role = Role()
    coalescer = Coalescer(role.send, max_texts=3, in_flight=1, wait_s=30.0)
    first = asyncio.create_task(coalescer.call(["t-1"], None))
    await asyncio.sleep(0.05)  # many loop turns: without the wait, the lone caller would be sent by now
    assert role.calls == []
    async with asyncio.timeout(DEADLINE_S):  # far below the 30 s wait: the second caller fills the call
        second = await coalescer.call(["t-2", "t-3"], None)
    assert rows(await first) == [1.0] and rows(second) == [2.0, 3.0]
    assert [texts for texts, _ in role.calls] == [["t-1", "t-2", "t-3"]]


@in_event_loop
async def test_a_wait_ends_with_whoever_came_when_it_runs_out() -> None:
    role = Role()
    coalescer = Coalescer(role.send, max_texts=8, in_flight=1, wait_s=0.05)
    async with asyncio.timeout(DEADLINE_S):
        assert rows(await coalescer.call(["t-1"], None)) == [1.0]
    assert [texts for texts, _ in role.calls] == [["t-1"]]


@in_event_loop
async def test_a_lone_caller_already_late_is_not_sent() -> None:
    role = Role()
    coalescer = Coalescer(role.send, max_texts=8, in_flight=1)
    with pytest.raises(DeadlinePassed):
        await coalescer.call(["t-1"], time.time() - 1)
    assert role.calls == [] and coalescer.calls_out == 0

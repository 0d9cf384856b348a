"""Free ports come from below the kernel's ephemeral range, where outgoing connections cannot take them."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from serving import ports


def test_ports_are_below_the_ephemeral_range_bindable_and_not_handed_out_twice() -> None:
    ephemeral_start = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    chosen = [ports.free_local_port() for _ in range(50)]
    assert len(set(chosen)) == len(chosen)
    assert all(20_000 <= port < min(ephemeral_start, 32_768) for port in chosen)
    with socket.socket() as server:
        server.bind(("127.0.0.1", chosen[-1]))  # still free: nothing else was given it


def test_a_taken_port_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", ports.free_local_port()))
        taken.listen()
        taken_port, other_port = taken.getsockname()[1], ports.free_local_port()
        ports._handed_out.difference_update({taken_port, other_port})
        offers = iter([taken_port, other_port])
        monkeypatch.setattr(ports._random, "randint", lambda low, high: next(offers))
        assert ports.free_local_port() == other_port


def test_without_room_below_the_ephemeral_range_the_kernel_chooses(monkeypatch: pytest.MonkeyPatch) -> None:
    real_start = ports._ephemeral_start()
    monkeypatch.setattr(ports, "_ephemeral_start", lambda: 20_500)
    assert ports.free_local_port() >= real_start

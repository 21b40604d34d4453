"""``tools.ports.free_port``: outside the ephemeral range, free, never twice."""

from __future__ import annotations

import random
import socket

import pytest

from tillsync.tools.ports import _ephemeral_start, free_port


def test_ports_are_free_distinct_and_below_the_ephemeral_range() -> None:
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert all(10000 <= p < _ephemeral_start() for p in ports)
    for port in ports[:5]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # still free: nothing held it


def test_a_port_in_use_is_passed_over(monkeypatch: pytest.MonkeyPatch) -> None:
    """The draw lands on a port a socket holds: the next draw is taken instead."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", free_port()))
        taken = held.getsockname()[1]
        draws = iter([taken, taken + 1 if taken + 1 < _ephemeral_start() else taken - 1])
        monkeypatch.setattr(random.SystemRandom, "randrange", lambda self, a, b: next(draws))
        port = free_port()
        assert port != taken and abs(port - taken) == 1

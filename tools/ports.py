"""A free TCP port on loopback for a process started later, for the demo, the
benchmarks and the tests that must name a till's port before the till runs (a static LAN
mesh lists its peers' addresses).

A port the kernel hands out for ``bind(0)`` comes from the ephemeral range, the same one
every outgoing connection takes its source port from: between choosing it and the till
binding it, one of the tills' own connections (to the relay, to a peer) could take it.
So the port is drawn below that range, at random, and checked free by binding it."""

from __future__ import annotations

import random
import socket
from pathlib import Path

_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 10000  # above the well-known and the usual registered service ports
_given: set[int] = set()  # never the same port twice to one process


def _ephemeral_start() -> int:
    try:
        return int(_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default; elsewhere only a likelier free range


def free_port(host: str = "127.0.0.1") -> int:
    """A port on ``host`` that is free now and outside the ephemeral range."""
    top = _ephemeral_start()
    draw = random.SystemRandom()
    for _ in range(500):
        port = draw.randrange(_LOWEST, top) if top > _LOWEST + 100 else 0
        if port in _given:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            port = int(s.getsockname()[1])
        _given.add(port)
        return port
    raise RuntimeError(f"no free port found on {host} below {top}")

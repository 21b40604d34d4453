"""How long a listening end waits for the other end, and the close codes it ends with.

A websocket that is accepted but never completes the protocol's handshake (``hello`` ...
``welcome`` at the relay, ``peer_hello`` ... ``auth`` on a till's LAN listener) holds a
socket and a task for nothing.  The listener closes it once ``HANDSHAKE_TIMEOUT``
seconds have passed since the websocket opened, with close code ``CLOSE_HANDSHAKE_TIMEOUT``.
A link on which no frame passed either way for ``IDLE_TIMEOUT`` seconds (websocket pings
and pongs do not count: they show the connection is alive, not that it is used) is
closed with ``CLOSE_IDLE`` where a listener watches for it (``watch_link``).
The codes are the protocol's own (``schemas/protocol/README.md``, Transport).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

HANDSHAKE_TIMEOUT = 10.0  # seconds from the websocket's opening to an authenticated link
IDLE_TIMEOUT = 300.0  # seconds without a frame either way on an authenticated link

CLOSE_HANDSHAKE_TIMEOUT = 4001  # the handshake did not complete in time
CLOSE_IDLE = 4002  # an authenticated link carried no frame for too long
CLOSE_BUSY = 1013  # "try again later": too many connections in the handshake already

log = logging.getLogger("tillsync.limits")


class Closable(Protocol):
    async def close(self, code: int = 1000, reason: str = "") -> None: ...


def seconds(value: float) -> str:
    """``10 s``, ``0.5 s``: a duration for a close reason or a log line."""
    return f"{value:g} s"


async def close_unless_authenticated(ws: Closable, authenticated: asyncio.Event,
                                     within: float, peer: str) -> bool:
    """Wait up to ``within`` seconds for ``authenticated``; if it is not set by then,
    close ``ws`` with ``CLOSE_HANDSHAKE_TIMEOUT`` and return False.  Run it as a task
    beside the connection's handler and cancel it when the connection ends."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within):
            await authenticated.wait()
    if authenticated.is_set():
        return True
    log.warning("%s: no handshake within %s: connection closed", peer, seconds(within))
    await ws.close(CLOSE_HANDSHAKE_TIMEOUT, f"handshake not completed within {seconds(within)}")
    return False


class Activity:
    """When a link last carried a frame: call ``heard`` for every frame received, and
    send under ``sending`` (each release of the lock counts as a frame sent)."""

    def __init__(self) -> None:
        self.last = asyncio.get_running_loop().time()
        self.sending: asyncio.Lock = _StampingLock(self)

    def heard(self) -> None:
        self.last = asyncio.get_running_loop().time()


class _StampingLock(asyncio.Lock):
    """A connection's send lock: each release marks the link as used."""

    def __init__(self, activity: Activity) -> None:
        super().__init__()
        self._activity = activity

    def release(self) -> None:
        self._activity.heard()
        super().release()


async def watch_link(ws: Closable, authenticated: asyncio.Event, activity: Activity, *,
                     handshake_timeout: float, idle_timeout: float, peer: str) -> None:
    """A connection's deadlines, as a task beside its handler (cancel it when the
    connection ends): closed with ``CLOSE_HANDSHAKE_TIMEOUT`` unless ``authenticated``
    is set within ``handshake_timeout``, then with ``CLOSE_IDLE`` once ``activity`` has
    seen no frame for ``idle_timeout`` seconds."""
    if not await close_unless_authenticated(ws, authenticated, handshake_timeout, peer):
        return
    loop = asyncio.get_running_loop()
    while True:
        quiet = loop.time() - activity.last
        if quiet >= idle_timeout:
            log.info("%s: no frame for %s: link closed", peer, seconds(idle_timeout))
            await ws.close(CLOSE_IDLE, f"idle: no frame for {seconds(idle_timeout)}")
            return
        await asyncio.sleep(idle_timeout - quiet)

"""How long a listening end waits for the other end, and the close codes it ends with.

A websocket that is accepted but never completes the protocol's handshake (``hello`` ...
``welcome`` at the relay, ``peer_hello`` ... ``auth`` on a till's LAN listener) holds a
socket and a task for nothing.  The listener closes it once ``HANDSHAKE_TIMEOUT``
seconds have passed since the websocket opened, with close code ``CLOSE_HANDSHAKE_TIMEOUT``.
The codes are the protocol's own (``schemas/protocol/README.md``, Transport).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

HANDSHAKE_TIMEOUT = 10.0  # seconds from the websocket's opening to an authenticated link

CLOSE_HANDSHAKE_TIMEOUT = 4001  # the handshake did not complete in time
CLOSE_IDLE = 4002  # an authenticated relay link carried no frame for too long
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

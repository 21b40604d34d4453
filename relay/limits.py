"""What a relay process allows a connection: time to log in, time to stay idle, and how
many connections may be logging in at once.

- **Handshake**: a connection must be authenticated (``welcome`` sent) within
  ``handshake_timeout`` seconds of its websocket opening, or it is closed with
  ``CLOSE_HANDSHAKE_TIMEOUT``.  An enrollment link closes by itself after ``enrolled``.
- **Idle**: an authenticated link on which no frame has passed, either way, for
  ``idle_timeout`` seconds is closed with ``CLOSE_IDLE``.  Websocket pings and pongs do
  not count: they show the connection is alive, not that it is used.  A till in a sync
  round is never idle that long (the reference till ends its round once the link has
  been quiet for 0.2 s, and gives a whole round 30 s); a device that holds its link open
  to be pushed receipts and document changes stays as long as the store is active.
- **Handshakes at once**: at most ``max_handshakes`` connections of a relay process may
  be between the websocket's opening and authentication; one more is closed at once with
  ``CLOSE_BUSY`` (1013, try again later).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from tillsync.peer.sync.deadlines import (
    CLOSE_BUSY,
    CLOSE_HANDSHAKE_TIMEOUT,
    CLOSE_IDLE,
    HANDSHAKE_TIMEOUT,
    IDLE_TIMEOUT,
    Activity,
    Closable,
    seconds,
)

log = logging.getLogger("tillsync.relay")

MAX_HANDSHAKES = 256  # connections of one relay process logging in at once

__all__ = ["IDLE_TIMEOUT", "MAX_HANDSHAKES", "Gate", "Limits", "LinkWatch"]


@dataclass(frozen=True)
class Limits:
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    idle_timeout: float = IDLE_TIMEOUT
    max_handshakes: int = MAX_HANDSHAKES


class Gate:
    """A relay process's count of connections in the handshake."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.handshaking = 0


class LinkWatch:
    """One connection's deadlines: ``admit`` it first, call ``logged_in`` once it is
    authenticated, send under ``sending`` (every frame sent counts as activity), call
    ``heard`` for every frame received and ``end`` when the connection ends.

    Its clock is one timer of the event loop at a time (the handshake's, then the idle
    one, re-armed for what is left when it fires early), not a task: a relay holds a
    connection per device, and an idle one should cost little more than its socket."""

    def __init__(self, gate: Gate, ws: Closable, peer: str) -> None:
        self.gate, self.ws, self.peer = gate, ws, peer
        self._activity = Activity()
        self.sending = self._activity.sending
        self.heard = self._activity.heard
        self._counted = False
        self._timer: asyncio.TimerHandle | None = None
        self._closing: asyncio.Task[None] | None = None

    async def admit(self) -> bool:
        """Count the connection in the handshake and start its clock; False (and the
        connection closed) if ``max_handshakes`` are in it already."""
        limits = self.gate.limits
        if self.gate.handshaking >= limits.max_handshakes:
            log.warning("%s: refused: %d connections in the handshake already", self.peer,
                        limits.max_handshakes)
            await self.ws.close(CLOSE_BUSY, "too many connections logging in; try again later")
            return False
        self.gate.handshaking += 1
        self._counted = True
        self._timer = asyncio.get_running_loop().call_later(limits.handshake_timeout,
                                                             self._handshake_due)
        return True

    def logged_in(self) -> None:
        self._release()
        if self._timer is not None:
            self._timer.cancel()
            self._arm(self.gate.limits.idle_timeout)

    async def end(self) -> None:
        self._release()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._closing is not None:
            with contextlib.suppress(Exception):
                await self._closing

    def _arm(self, delay: float) -> None:
        self._timer = asyncio.get_running_loop().call_later(delay, self._idle_due)

    def _handshake_due(self) -> None:
        within = self.gate.limits.handshake_timeout
        log.warning("%s: no handshake within %s: connection closed", self.peer, seconds(within))
        self._close(CLOSE_HANDSHAKE_TIMEOUT, f"handshake not completed within {seconds(within)}")

    def _idle_due(self) -> None:
        limit = self.gate.limits.idle_timeout
        quiet = asyncio.get_running_loop().time() - self._activity.last
        if quiet < limit:
            self._arm(limit - quiet)
            return
        log.info("%s: no frame for %s: link closed", self.peer, seconds(limit))
        self._close(CLOSE_IDLE, f"idle: no frame for {seconds(limit)}")

    def _close(self, code: int, reason: str) -> None:
        self._timer = None
        self._closing = asyncio.create_task(self.ws.close(code, reason))

    def _release(self) -> None:
        if self._counted:
            self._counted = False
            self.gate.handshaking -= 1

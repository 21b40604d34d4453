"""The relay's graceful stop (``peer/shutdown.py`` has the signals and the deadlines).

In order, each phase logged and bounded: stop accepting connections; stop taking in
entries frames (one that arrives now is not stored: its till sends it again) and let the
batches already taken in commit and be answered; close every link with code 1001 (going
away); cancel the connection handlers still running; close the storage.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from tillsync.peer.shutdown import Deadlines, cancel_and_wait

log = logging.getLogger("tillsync.shutdown")


class InFlight:
    """Entries frames taken in from devices and not yet answered, over all links."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def taken(self) -> None:
        self.count += 1
        self._idle.clear()

    def settled(self, n: int = 1) -> None:
        """``n`` batches answered, or given up with their link."""
        self.count = max(0, self.count - n)
        if self.count == 0:
            self._idle.set()

    async def idle(self) -> None:
        await self._idle.wait()


async def stop_serving(server: Any, batches: InFlight, closing: asyncio.Event,
                       deadlines: Deadlines) -> None:
    """Stop the websocket ``server`` of a relay whose batches in flight are ``batches``;
    ``closing`` tells its connections to take in no more entries frames."""
    server.server.close()  # the listening sockets: no new connections
    closing.set()
    log.info("shutdown: no longer accepting connections; finishing %d batches in flight "
             "(up to %.1f s)", batches.count, deadlines.drain)
    try:
        async with asyncio.timeout(deadlines.drain):
            await batches.idle()
    except TimeoutError:
        log.warning("shutdown: %d batches still in flight after %.1f s: their links close "
                    "unanswered (a batch stored meanwhile is found stored when its till "
                    "sends it again)", batches.count, deadlines.drain)
    log.info("shutdown: closing %d links (going away, up to %.1f s)", len(server.connections),
             deadlines.close)
    server.close()  # code 1001 to every open link, then waits for the handlers
    try:
        async with asyncio.timeout(deadlines.close):
            await server.wait_closed()
    except TimeoutError:
        handlers = list(server.handler_tasks)
        log.warning("shutdown: cancelling %d connection handlers still running after %.1f s",
                    len(handlers), deadlines.close)
        await cancel_and_wait(handlers, deadlines.cancel, "connection handlers")


async def close_bounded(close: Callable[[], Awaitable[None]], deadlines: Deadlines) -> None:
    """The relay's last phase: its storage closed (``Relay.close``) within
    ``deadlines.cancel`` seconds.  A PostgreSQL pool waits for every connection to be
    given back; one that is not by then is dropped (the pool terminates when its close
    is cancelled): nothing uncommitted was ever acknowledged."""
    try:
        async with asyncio.timeout(deadlines.cancel):
            await close()
    except TimeoutError:
        log.warning("shutdown: the storage did not close within %.1f s: its connections "
                    "are dropped", deadlines.cancel)
    else:
        log.info("shutdown: storage closed")


def prepare_worker(parent: int) -> None:
    """The initializer of the relay's prepare worker processes: a Ctrl-C at a terminal
    reaches the whole process group; the worker leaves the stop to the relay (which
    shuts the pool down), and exits when the relay is gone."""
    from tillsync.relay.server import die_with_parent

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent)

"""What the HTTP API needs from the daemon that serves it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tillsync.peer.http.events import EventBus
from tillsync.peer.store import Till


class KeyedLocks:
    """One lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


@dataclass
class ApiContext:
    till: Till
    events: EventBus
    # The daemon's view of its LAN peers and relay rounds (``Node.status``).
    daemon_status: Callable[[], dict[str, Any]]
    # Runs one sync round with the relay now; ``rewind`` first sets the receipt position
    # back to the start of the relay's stream.
    sync_round: Callable[[bool], Awaitable[dict[str, Any]]]
    client_ids: KeyedLocks = field(default_factory=KeyedLocks)


KEY: web.AppKey[ApiContext] = web.AppKey("tillsync", ApiContext)


def context(request: web.Request) -> ApiContext:
    return request.app[KEY]

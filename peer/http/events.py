"""Live events for front ends: one small bus owned by the daemon, served as
Server-Sent Events on ``/api/events``.

Events (the SSE ``event:`` field, with a JSON ``data:`` object):

``master``  ``{"collection", "changed": [ids], "deleted": [ids], "sync_cursor"}`` after
            any master-data commit: a put here, a merge from a LAN peer or the relay.
``receipt`` ``{"client_id", "kind", "ticket", "status", "invoice", "device_id"}`` for
            each receipt of the relay's stream stored here (from the relay or the LAN).
``entry``   ``{"client_id", "kind", "device_id", "seq", "ticket"}`` for each entry
            stored here: recorded at this till or received from another.
``sync``    the relay round's outcome (``ok``, ``at``, ``pushed``, ``error`` ...).
``peer``    ``{"device_id", "name", "address", "connected"}`` when a LAN peer joins
            or leaves.

The commit-driven events come from the store's own commit signal (``Till.wait_changed``):
the bus wakes on each commit and reads what it brought, up to where the store stood when
it committed (``Till.committed``), so nothing polls, nothing is missed between two
wake-ups and nothing is told before it is durable.  A subscriber that falls ``QUEUE``
events behind is cut off (it reconnects and reads the current state again).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from tillsync.peer.http.delta import changes_all, cursor_of
from tillsync.peer.invoice import official_number
from tillsync.peer.master.document import COLLECTIONS
from tillsync.peer.store import Till

log = logging.getLogger("tillsync.http")
QUEUE = 1000
KEEPALIVE = 15.0  # seconds between SSE comments, so proxies keep the stream open


class EventBus:
    def __init__(self) -> None:
        self._subscribers: set[asyncio.Queue[tuple[str, dict[str, Any]] | None]] = set()
        self._peers: dict[str, tuple[bool, float]] = {}  # device -> (connected, since)

    def publish(self, kind: str, data: Mapping[str, Any]) -> None:
        for queue in list(self._subscribers):
            try:
                queue.put_nowait((kind, dict(data)))
            except asyncio.QueueFull:
                self._subscribers.discard(queue)
                queue.get_nowait()
                queue.put_nowait(None)  # tells the stream to end

    def subscribe(self) -> asyncio.Queue[tuple[str, dict[str, Any]] | None]:
        queue: asyncio.Queue[tuple[str, dict[str, Any]] | None] = asyncio.Queue(QUEUE)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[tuple[str, dict[str, Any]] | None]) -> None:
        self._subscribers.discard(queue)

    def peers_seen(self, peers: Mapping[str, Any]) -> None:
        """Publish the LAN peers that joined or left since the last call (``peers``: the
        daemon's ``PeerInfo`` by device id)."""
        now = {device: (bool(info.connected), float(getattr(info, "since", 0.0)))
               for device, info in peers.items()}
        for device, (connected, since) in now.items():
            was, was_since = self._peers.get(device, (False, 0.0))
            info = peers[device]
            about = {"device_id": device, "name": info.name, "address": info.address}
            if not connected and not was and since != was_since:  # joined and left
                self.publish("peer", {**about, "connected": True})
                self.publish("peer", {**about, "connected": False})
            elif connected != was or (connected and since != was_since):
                self.publish("peer", {**about, "connected": connected})
        for device in self._peers.keys() - now.keys():
            if self._peers[device][0]:
                self.publish("peer", {"device_id": device, "connected": False})
        self._peers = now

    async def watch(self, till: Till) -> None:
        """Publish what each commit of the store brings, until cancelled.

        It reads only up to ``till.committed``, taken after each commit, and moves where
        it stands only to such a snapshot: a batch still in flight (memory already moved,
        rows on the writer's connection not yet committed) is neither published early
        nor skipped; its own wake-up publishes it to whoever is subscribed by then."""
        done = till.committed
        version = till.version
        while True:
            version = await till.wait_changed(version)
            now = till.committed
            if now is done:
                continue  # a wake-up with no commit (a file came in)
            if self._subscribers:  # else nobody to tell: only where things stand moves
                try:
                    self._master(till, done.master, now.master)
                    await self._receipts(till, done.receipts, now.receipts)
                    await self._entries(till, done.heads, now.heads)
                except Exception:  # a bad event must not end the stream of the others
                    log.exception("publishing the store's changes failed")
            done = now

    def _master(self, till: Till, before: tuple[bytes, ...], now: tuple[bytes, ...]) -> None:
        if set(now) == set(before):
            return
        deltas = changes_all(till, list(before), list(now))
        for collection in COLLECTIONS:
            delta = deltas.get(collection)
            if delta is not None and (delta.changed or delta.deleted):
                deleted = sorted(i for i in delta.changed | delta.deleted
                                 if not till.master.has(collection, i, now))
                self.publish("master", {"collection": collection, "deleted": deleted,
                                        "changed": sorted(delta.changed - set(deleted)),
                                        "sync_cursor": cursor_of(list(now))})

    async def _receipts(self, till: Till, after: int, position: int) -> None:
        # Below ``after``: rewound for a full resync, they come again.
        while after < position:
            batch = await till.stream_after(after, min(500, position - after))
            if not batch:
                break
            for r in batch:
                self.publish("receipt", {"client_id": r["client_id"], "kind": r.get("kind"),
                                         "ticket": r.get("ticket"), "status": r["status"],
                                         "invoice": official_number(r),
                                         "device_id": r.get("device_id")})
            after = int(batch[-1]["server_seq"])

    async def _entries(self, till: Till, before: Mapping[str, int],
                       now: Mapping[str, int]) -> None:
        if now == before:
            return
        seen = dict(before)
        while batch := await till.entries_after(seen, 1000, now):
            for entry in batch:
                seen[entry.device_id] = max(seen.get(entry.device_id, 0), entry.seq)
                self.publish("entry", {"client_id": entry.client_id, "kind": entry.kind,
                                       "device_id": entry.device_id, "seq": entry.seq,
                                       "ticket": entry.ticket})


async def stream(request: web.Request, bus: EventBus) -> web.StreamResponse:
    """``GET /api/events``: Server-Sent Events until the client leaves."""
    queue = bus.subscribe()
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
    try:
        await response.prepare(request)
        await response.write(b": connected\n\n")
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), KEEPALIVE)
            except TimeoutError:
                await response.write(b": keep-alive\n\n")
                continue
            if item is None:
                break
            kind, data = item
            await response.write(f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode())
    except ConnectionError:
        pass
    finally:
        bus.unsubscribe(queue)
    return response

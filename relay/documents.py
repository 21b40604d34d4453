"""The relay's copy of each store's master document, and who to tell when it changes."""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from tillsync.peer.master import MasterData
from tillsync.peer.sync.frames import receipts_frame
from tillsync.relay.storage import RelayStorage

log = logging.getLogger("tillsync.relay")


class Wake:
    """What a connection's pump sleeps on: ``asyncio.Event``'s ``set``, ``clear`` and
    ``wait``, for one waiter at a time.  It holds a future only while its pump waits;
    an ``Event`` keeps a deque of waiters (about 0.7 KiB), and a relay holds one of
    these for every idle connection."""

    __slots__ = ("_set", "_waiter")

    def __init__(self) -> None:
        self._set = False
        self._waiter: asyncio.Future[None] | None = None

    def set(self) -> None:
        self._set = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    def is_set(self) -> bool:
        return self._set

    async def wait(self) -> None:
        if self._set:
            return
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None


class StoreHub:
    """One store at this relay process: its document and a signal for changes.

    ``changed`` is replaced by a fresh event each time something new is committed
    (receipts or document changes), so every connection waiting on it wakes once."""

    RECENT = 64  # receipt frames kept encoded for connections that are up to date

    def __init__(self, store: str, doc: MasterData, position: int = 0) -> None:
        self.store = store
        self.doc = doc
        # The highest stored change id ``doc`` is known to hold, and whether another
        # process has stored changes past it (shared databases only).
        self.position = position
        self.stale = False
        self.changed = asyncio.Event()
        self._watchers: set[Wake] = set()  # each connection's pump waker
        self.lock = asyncio.Lock()  # one document merge at a time
        # (first server_seq, last server_seq, encoded receipts frame): a batch's receipts
        # go to every connected till of the store, so they are encoded once, not per till.
        self.recent: deque[tuple[int, int, bytes]] = deque(maxlen=self.RECENT)
        self._products: dict[str, Mapping[str, Any] | None] = {}
        self._customers: dict[str, Mapping[str, Any] | None] = {}

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()
        for wake in self._watchers:
            wake.set()

    def watch(self, wake: Wake) -> None:
        """Set ``wake`` on every change, until ``unwatch``."""
        self._watchers.add(wake)

    def unwatch(self, wake: Wake) -> None:
        self._watchers.discard(wake)

    def publish(self, receipts: list[dict[str, Any]], position: int, per_frame: int,
                packed: Sequence[bytes]) -> None:
        """Keep a committed batch's receipts as ready-to-send frames, then wake the pumps.
        ``packed``: each receipt's msgpack bytes, as sealing made them."""
        for i in range(0, len(receipts), per_frame):
            part = receipts[i:i + per_frame]
            self.recent.append((part[0]["server_seq"], part[-1]["server_seq"],
                                receipts_frame(packed[i:i + per_frame], position)))
        self.notify()

    def frame_after(self, after: int) -> tuple[int, bytes] | None:
        """The encoded frame continuing the stream right after ``after``, if still kept."""
        for first, last, frame in reversed(self.recent):
            if first == after + 1:
                return last, frame
            if last <= after:
                break
        return None

    def product(self, product_id: str) -> Mapping[str, Any] | None:
        """What ingest needs of a product (volatile, reorder level), memoised until the
        document changes: reading two fields costs microseconds, where re-extracting a
        whole 20k-product catalogue after each price edit would cost ~300 ms."""
        try:
            return self._products[product_id]
        except KeyError:
            found = self.doc.fields("products", product_id,
                                    ("volatile", "reorder_level", "active"))
            self._products[product_id] = found
            return found

    def customer(self, customer_id: str) -> Mapping[str, Any] | None:
        """What ingest's counter checks need of a customer (active, credit limit),
        memoised until the document changes, as ``product``."""
        try:
            return self._customers[customer_id]
        except KeyError:
            found = self.doc.fields("customers", customer_id, ("active", "credit_limit"))
            self._customers[customer_id] = found
            return found

    def document_changed(self) -> None:
        self._products.clear()
        self._customers.clear()
        self.notify()


class Hubs:
    """This process's hubs.  On a shared database (several relay processes) a hub also
    follows what the others store: their receipts wake its pumps, their document
    changes are merged in."""

    def __init__(self, storage: RelayStorage) -> None:
        self._storage = storage
        self._hubs: dict[str, StoreHub] = {}
        self._actor = os.urandom(16)  # the relay merges, it never edits: any actor will do
        self._refreshing: dict[str, asyncio.Task[None]] = {}
        if storage.shared:
            storage.subscribe(self._changed_elsewhere)

    async def get(self, store: str) -> StoreHub:
        hub = self._hubs.get(store)
        if hub is None:
            data, position = await self._storage.document_at(store)
            if not data:
                # The genesis change is stored too: later chunks depend on it.  (It is the
                # same for every store and process, so two processes racing here agree.)
                await self._storage.init_document(store, MasterData.new(self._actor).save())
                data, position = await self._storage.document_at(store)
            hub = self._hubs.setdefault(store, StoreHub(store, MasterData.load(data, self._actor),
                                                        position))
        elif self._storage.shared:
            await self.refresh(hub)  # a device connects: it gets the latest document
        return hub

    async def persist(self, hub: StoreHub, chunks: list[bytes]) -> None:
        """Store new change chunks; fold them into a snapshot once they outgrow it.
        The caller holds ``hub.lock``."""
        if not chunks:
            return
        before, after = await self._storage.append_document(hub.store, chunks)
        if before == hub.position:  # nobody else stored changes in between
            hub.position = after
        else:
            hub.stale = True
            self._refresh_soon(hub)
        snapshot, changes = await self._storage.document_sizes(hub.store)
        if changes > max(snapshot, 64 * 1024):
            await self._storage.compact_document(hub.store, hub.doc.save(), hub.position)

    async def refresh(self, hub: StoreHub) -> None:
        """Merge what other processes stored since ``hub.position`` (shared databases)."""
        async with hub.lock:
            position = await self._storage.document_position(hub.store)
            if position == hub.position and not hub.stale:
                return
            hub.stale = False
            data, position = await self._storage.document_at(hub.store)
            new = hub.doc.apply(data)
            hub.position = max(hub.position, position)
        if new:
            hub.document_changed()

    def _changed_elsewhere(self, kind: str, store: str) -> None:
        if kind == "receipts":
            hub = self._hubs.get(store)
            if hub is not None:
                hub.notify()  # its pumps read the new receipts from the database
        elif kind == "document":
            hub = self._hubs.get(store)
            if hub is not None:
                hub.stale = True
                self._refresh_soon(hub)
        elif kind == "resync":
            for hub in self._hubs.values():
                hub.stale = True
                hub.notify()
                self._refresh_soon(hub)

    def _refresh_soon(self, hub: StoreHub) -> None:
        if hub.store in self._refreshing:
            return  # one at a time; it reads everything up to when it runs

        async def run() -> None:
            try:
                while hub.stale:
                    await self.refresh(hub)
            except Exception:
                log.exception("could not follow the document of store %s", hub.store)
            finally:
                del self._refreshing[hub.store]

        self._refreshing[hub.store] = asyncio.create_task(run(), name=f"doc-{hub.store}")

"""The relay's copy of each store's master document, and who to tell when it changes."""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import Mapping
from typing import Any

from peer.master import MasterData
from peer.sync.frames import encode
from relay.storage import SQLiteStorage


class StoreHub:
    """One store at this relay process: its document and a signal for changes.

    ``changed`` is replaced by a fresh event each time something new is committed
    (receipts or document changes), so every connection waiting on it wakes once."""

    RECENT = 64  # receipt frames kept encoded for connections that are up to date

    def __init__(self, store: str, doc: MasterData) -> None:
        self.store = store
        self.doc = doc
        self.changed = asyncio.Event()
        self.lock = asyncio.Lock()  # one document merge at a time
        # (first server_seq, last server_seq, encoded receipts frame): a batch's receipts
        # go to every connected till of the store, so they are encoded once, not per till.
        self.recent: deque[tuple[int, int, bytes]] = deque(maxlen=self.RECENT)
        self._products: dict[str, Mapping[str, Any] | None] = {}

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    def publish(self, receipts: list[dict[str, Any]], position: int, per_frame: int) -> None:
        """Keep a committed batch's receipts as ready-to-send frames, then wake the pumps."""
        for i in range(0, len(receipts), per_frame):
            part = receipts[i:i + per_frame]
            self.recent.append((part[0]["server_seq"], part[-1]["server_seq"],
                                encode("receipts", receipts=part, head=position)))
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
            found = self.doc.fields("products", product_id, ("volatile", "reorder_level"))
            self._products[product_id] = found
            return found

    def document_changed(self) -> None:
        self._products.clear()
        self.notify()


class Hubs:
    def __init__(self, storage: SQLiteStorage) -> None:
        self._storage = storage
        self._hubs: dict[str, StoreHub] = {}
        self._actor = os.urandom(16)  # the relay merges, it never edits: any actor will do

    async def get(self, store: str) -> StoreHub:
        hub = self._hubs.get(store)
        if hub is None:
            data = await self._storage.document(store)
            if data:
                doc = MasterData.load(data, self._actor)
            else:
                # The genesis change is stored too: later chunks depend on it.
                doc = MasterData.new(self._actor)
                await self._storage.compact_document(store, doc.save())
            hub = self._hubs.setdefault(store, StoreHub(store, doc))
        return hub

    async def persist(self, hub: StoreHub, chunks: list[bytes]) -> None:
        """Store new change chunks; fold them into a snapshot once they outgrow it."""
        if not chunks:
            return
        await self._storage.append_document(hub.store, chunks)
        snapshot, changes = await self._storage.document_sizes(hub.store)
        if changes > max(snapshot, 64 * 1024):
            await self._storage.compact_document(hub.store, hub.doc.save())

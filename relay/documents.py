"""The relay's copy of each store's master document, and who to tell when it changes."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from typing import Any

from peer.master import MasterData
from relay.storage import SQLiteStorage


class StoreHub:
    """One store at this relay process: its document and a signal for changes.

    ``changed`` is replaced by a fresh event each time something new is committed
    (receipts or document changes), so every connection waiting on it wakes once."""

    def __init__(self, store: str, doc: MasterData) -> None:
        self.store = store
        self.doc = doc
        self.changed = asyncio.Event()
        self.lock = asyncio.Lock()  # one document merge at a time

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    def product(self, product_id: str) -> Mapping[str, Any] | None:
        return self.doc.get("products", product_id)


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

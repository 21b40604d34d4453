"""The narrow interface between the relay's logic and its database.

Everything that must be decided once (invoice numbers, server ids, receipt positions)
is read and written through ``RelayTxn`` inside one transaction, so a backend only has
to make that transaction serializable per store (SQLite: one writer at a time;
PostgreSQL: a row lock on the store's stream head, taken before anything is read).
Reads outside a transaction serve receipts, heads and documents to connected devices.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from tillsync.peer.log import Entry
from tillsync.relay import metrics

log = logging.getLogger("tillsync.relay")
T = TypeVar("T")


@dataclass(frozen=True)
class DeviceRow:
    store: str
    device_id: str
    name: str
    public_key: bytes
    role: str
    revoked_at: str | None = None
    # The highest seq of the device the relay held when it was revoked: its entries up
    # to it stay valid, those after it are refused.
    revoked_upto: int | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


class RelayTxn(Protocol):
    """Reads and writes inside one ingest transaction.  Bulk by design: one call per
    batch, never one per entry."""

    async def lock(self, stores: Iterable[str]) -> None:
        """Take these stores' ingest locks now, in a fixed order (a group commit spans
        several stores).  Every other call takes its store's lock too if not held yet."""
        ...
    async def device(self, store: str, device_id: str) -> DeviceRow | None: ...
    async def heads(self, store: str, devices: Iterable[str]) -> dict[str, tuple[int, bytes]]: ...
    async def known_client_ids(self, store: str, client_ids: Sequence[str]) -> dict[str, bytes]:
        """client_id -> hash of the stored entry, for those already stored."""
        ...
    async def entries(self, store: str, client_ids: Sequence[str]) -> list[Entry]: ...
    async def insert_entries(self, store: str, entries: Sequence[Entry], at: str) -> None: ...
    async def counters(self, store: str, names: Iterable[str]) -> dict[str, int]:
        """Current values (0 if new) of named counters, locked for this transaction."""
        ...
    async def set_counters(self, store: str, values: dict[str, int]) -> None: ...
    async def stream_head(self, store: str) -> tuple[int, bytes]: ...
    async def set_stream_head(self, store: str, seq: int, head: bytes) -> None: ...
    async def insert_receipts(self, store: str, receipts: Sequence[dict[str, Any]],
                              packed: Sequence[bytes]) -> None:
        """``packed``: each receipt's msgpack bytes, as sealing made them."""
        ...
    async def mappings(self, store: str, kind: str, client_ids: Iterable[str]) -> dict[str, str]:
        """client_id -> server id, for ``kind`` in ("shift", "held")."""
        ...
    async def add_mappings(self, store: str, kind: str, rows: dict[str, str]) -> None: ...
    async def waiting_for(self, store: str, dependencies: Iterable[str]) -> list[str]:
        """client_ids of entries waiting on any of ``dependencies``, removed from the list."""
        ...
    async def add_waiting(self, store: str, rows: Sequence[tuple[str, str]]) -> None: ...
    async def stock(self, store: str, product_ids: Iterable[str]) -> dict[str, int]:
        """Stock in millionths of a unit, of the products that have moved before (the
        others are absent, not 0: their first movement is told apart)."""
        ...
    async def set_stock(self, store: str, levels: dict[str, int]) -> None: ...
    async def set_prices(self, store: str, prices: dict[str, tuple[int, str]]) -> None:
        """Suggested prices of volatile products: (price, the sale's place as
        ``peer.views.order_of``); a stored price of a later sale is kept."""
        ...
    async def add_invoices(self, store: str, rows: Sequence[tuple[Any, ...]]) -> None: ...
    async def add_alerts(self, store: str, rows: Sequence[tuple[Any, ...]]) -> None: ...
    async def add_rejected(self, store: str, rows: Sequence[tuple[Any, ...]]) -> None:
        """Rows (client_id, device_id, seq, code, message, entry, at, sent_by): sent_by is
        the device whose link carried the entry (None if not known)."""
        ...
    async def add_tallies(self, store: str,
                          writes: Sequence[tuple[str, list[tuple[Any, ...]]]]) -> None:
        """Run ``relay.tallies.Tallies.writes``: upserts of the store's running totals
        (SQL with ``?`` placeholders, rows scoped to ``store``)."""
        ...
    async def rejected(self, store: str, client_ids: Sequence[str]) -> set[tuple[str, str]]:
        """(client_id, code) of entries already rejected and kept."""
        ...


class RelayStorage(Protocol):
    # True when other processes write to the same database (the relay must follow it).
    shared: bool

    async def close(self) -> None: ...
    def transaction(self) -> AbstractAsyncContextManager[RelayTxn]: ...
    def retryable(self, exc: BaseException) -> bool:
        """Whether a transaction that failed with ``exc`` (rolled back, whole) may
        succeed if run again: a deadlock, a serialization failure, a lost connection."""
        ...
    def subscribe(self, listener: Callable[[str, str], None]) -> None:
        """``listener(kind, store)`` when another process commits "receipts" or a
        "document" change of a store, or ("resync", "") when some may have been missed."""
        ...

    # devices and enrollment
    async def device(self, store: str, device_id: str) -> DeviceRow | None: ...
    async def add_code(self, store: str, code_hash: bytes, name: str, role: str,
                       expires_at: str) -> None: ...
    async def enroll(self, code_hash: bytes, device_id: str, name: str, public_key: bytes,
                     now: str) -> DeviceRow | str:
        """The new device, or why it was refused (``code_refusal``)."""
        ...
    async def touch(self, store: str, device_id: str, now: str) -> None: ...
    async def store_key(self, store: str) -> tuple[bytes | None, bytes | None] | None:
        """The store's signing key as (public key, sealed key): both None for a store
        that signs with the relay's own key (made before per-store keys); None if the
        store has no row (``relay/storekeys.py``)."""
        ...
    async def add_store_key(self, store: str, public_key: bytes, sealed: bytes,
                            now: str) -> None:
        """Keep a new store's sealed key, unless the store has one already (several
        processes may make one at once: the first row stays)."""
        ...
    async def devices(self, store: str) -> list[DeviceRow]: ...
    async def read(self, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """Rows of a read-only query written in the SQL both backends speak, with ``?``
        placeholders (reporting: ``relay/reports.py``)."""
        ...
    async def add_admin_token(self, store: str, token_hash: bytes, now: str) -> None:
        """Keep the SHA-256 of a reporting API token of ``store`` (never the token)."""
        ...
    async def revoke(self, store: str, device_id: str, now: str) -> DeviceRow | None:
        """Revoke a device, under the store's ingest lock so that ``revoked_upto`` (its
        highest stored seq) is exact; a device revoked already is returned unchanged.
        None if the store has no such device."""
        ...
    async def revocations(self, store: str) -> list[DeviceRow]:
        """The store's revoked devices."""
        ...

    # what connected devices read
    async def heads(self, store: str) -> dict[str, int]: ...
    async def receipts_after(self, store: str, after: int, limit: int) -> list[dict[str, Any]]: ...
    async def stream_position(self, store: str) -> int: ...

    # master documents.  A position is the highest change id a document includes.
    async def document(self, store: str) -> bytes: ...
    async def document_at(self, store: str) -> tuple[bytes, int]:
        """The whole document and its position, read consistently."""
        ...
    async def document_position(self, store: str) -> int: ...
    async def document_sizes(self, store: str) -> tuple[int, int]: ...
    async def init_document(self, store: str, genesis: bytes) -> None:
        """Store ``genesis`` unless the store has a document already."""
        ...
    async def append_document(self, store: str, chunks: Sequence[bytes]) -> tuple[int, int]:
        """Append changes; returns (position before them, position after them)."""
        ...
    async def compact_document(self, store: str, snapshot: bytes, upto: int) -> None:
        """Fold the changes up to position ``upto``, all in ``snapshot``, into it."""
        ...


# The highest seq of each device with entries in a store, in the SQL both backends speak
# (``?`` placeholders, each the store).  The devices are found by skipping from one to the
# next (a loose index scan) and each max(seq) is one probe of the primary key's end:
# ``GROUP BY device_id`` would read every entry of the store, a cost that grew with its
# history, paid by every connection.
ALL_HEADS = """
WITH RECURSIVE d(device_id) AS (
    SELECT (SELECT min(device_id) FROM entries WHERE store = ?)
    UNION ALL
    SELECT (SELECT min(device_id) FROM entries WHERE store = ? AND device_id > d.device_id)
    FROM d WHERE d.device_id IS NOT NULL)
SELECT device_id, (SELECT max(seq) FROM entries WHERE store = ? AND device_id = d.device_id)
FROM d WHERE device_id IS NOT NULL
"""


def code_refusal(found: bool, used_at: str | None, expires_at: str, now: str) -> str | None:
    """Why an enrollment code cannot be used now, or None if it can."""
    if not found:
        return "the enrollment code is unknown (check it, or make a new one with `tillsync " \
               "relay enroll`)"
    if used_at is not None:
        return f"the enrollment code was used already, at {used_at}: a code enrolls one " \
               "device; make a new one with `tillsync relay enroll`"
    if expires_at <= now:
        return f"the enrollment code expired at {expires_at}; make a new one with " \
               "`tillsync relay enroll`"
    return None


async def with_retries(storage: RelayStorage, what: str, attempt: Callable[[], Awaitable[T]],
                       *, tries: int = 8, first_pause: float = 0.05) -> T:
    """Run ``attempt`` (a whole transaction) again while it fails in a way the backend
    calls retryable, with exponential backoff and jitter: about 10 s in all.  The last
    failure, or any other, is raised."""
    pause = first_pause
    for left in range(tries - 1, -1, -1):
        try:
            return await attempt()
        except Exception as exc:
            retried = bool(left) and storage.retryable(exc)
            metrics.database_failed(exc, retried)
            if not retried:
                raise
            log.warning("%s failed (%s: %s); retrying in %.2f s", what, type(exc).__name__,
                        exc, pause)
        await asyncio.sleep(pause * random.uniform(0.5, 1.0))
        pause = min(pause * 2, 3.0)
    raise AssertionError("unreachable")

"""The relay's PostgreSQL backend: several relay processes on one database.

Driver: asyncpg.  It speaks the binary protocol natively (bytea and bigint arrays go
over the wire without text round trips), pipelines ``executemany`` and has a connection
pool and ``LISTEN`` built in; psycopg 3 would do too, but its async pool is a separate
package and it is measurably slower on the bulk inserts ingest does every batch.

Locking.  Transactions run at READ COMMITTED.  The first thing an ingest transaction
does for a store is lock that store's row of ``stream_heads`` (``SELECT ... FOR
UPDATE``, the row made on first use).  Every writer of a store's counters, mappings,
waiting list, stock, entries and receipts holds that lock, so once a transaction has it,
each later statement sees everything the previous holder committed and nothing can
change under it until commit: invoice numbers are read and written under the lock,
never kept in memory, and stay gapless across any number of relay processes.  Stores
are locked in sorted order (``RelayTxn.lock``), so two processes committing groups of
stores cannot deadlock in the common case; a deadlock or serialization failure anyway
is reported as retryable and the whole transaction is run again (see
``relay.server``).  A connection lost mid-transaction rolls it back, whole.

Other processes learn what changed through ``LISTEN``/``NOTIFY`` on one channel.  The
notification is sent by the transaction itself (``pg_notify`` inside it), so it goes
out exactly when the transaction commits, never for one that rolled back.  Its payload
only says "store S has new receipts" or "store S's document changed": what to send is
always read from the tables by stream position, so a notification lost while a
listener reconnects costs latency, not data (after reconnecting every store is woken).

Master documents: change chunks are appended under a lock on the store's
``doc_snapshot`` row, so their ids are committed in increasing order per store and
"every change after id N" is a safe question; a compaction deletes only the changes its
snapshot covers (``upto``), never one another process added meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import msgpack
from asyncpg.pool import PoolConnectionProxy

from tillsync.peer.errors import StoreError
from tillsync.peer.log import Entry
from tillsync.peer.shutdown import Deadlines, cancel_and_wait
from tillsync.relay.storage.base import ALL_HEADS, DeviceRow, code_refusal

# The schema lives in pg_schema; these names are imported from here too.
from tillsync.relay.storage.pg_schema import MIGRATIONS as MIGRATIONS
from tillsync.relay.storage.pg_schema import SCHEMA_VERSION as SCHEMA_VERSION
from tillsync.relay.storage.pg_schema import _dollars
from tillsync.relay.storage.pg_schema import migrate_schema as migrate_schema
from tillsync.relay.storage.pg_schema import schema_version as schema_version

log = logging.getLogger("tillsync.relay.postgres")

CHANNEL = "tillsync"
_ZERO = bytes(32)


# The heads of some devices, with one index probe each, never by walking their entries
# (``DISTINCT ON (device_id) ... ORDER BY device_id, seq DESC`` read every entry of the
# store, a cost that grew with its history, paid by every commit).
_HEADS_OF = """
SELECT d.device_id, e.seq, e.hash FROM unnest($2::text[]) AS d(device_id)
CROSS JOIN LATERAL (SELECT seq, hash FROM entries WHERE store = $1 AND device_id = d.device_id
                    ORDER BY seq DESC LIMIT 1) e
"""

# Errors after which running the transaction again may succeed.
_RETRYABLE = (
    asyncpg.SerializationError, asyncpg.DeadlockDetectedError,
    asyncpg.ConnectionDoesNotExistError, asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError, asyncpg.AdminShutdownError, asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError, asyncpg.PostgresConnectionError,
    ConnectionError, OSError, TimeoutError,
)


class DatabaseUnavailable(StoreError):
    """PostgreSQL could not be reached (or refused us) within the time allowed."""


def with_database(url: str, database: str) -> str:
    """``url`` naming another database on the same server."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query,
                       parts.fragment))


def describe(url: str) -> str:
    """The database URL without its password, for messages."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    user = f"{parts.username}@" if parts.username else ""
    return f"postgresql://{user}{host}{port}{parts.path}"


def _device(row: Any) -> DeviceRow | None:
    if row is None:
        return None
    return DeviceRow(row[0], row[1], row[2], bytes(row[3]), row[4], row[5],
                     None if row[6] is None else int(row[6]))


_DEVICE_COLUMNS = "store, device_id, name, public_key, role, revoked_at, revoked_upto"


class _Txn:
    """``RelayTxn`` on one connection inside one transaction."""

    def __init__(self, conn: asyncpg.Connection | PoolConnectionProxy[Any], token: str
                 ) -> None:
        self._c = conn
        self._token = token
        self._locked: set[str] = set()

    async def lock(self, stores: Iterable[str]) -> None:
        """Take the stores' ingest locks, in sorted order (so two processes cannot
        deadlock on them)."""
        for store in sorted(set(stores) - self._locked):
            await self._c.execute(
                "INSERT INTO stream_heads (store, seq, hash) VALUES ($1, 0, $2) "
                "ON CONFLICT (store) DO NOTHING", store, _ZERO)
            await self._c.execute("SELECT 1 FROM stream_heads WHERE store = $1 FOR UPDATE",
                                  store)
            self._locked.add(store)

    async def _own(self, store: str) -> None:
        if store not in self._locked:
            await self.lock([store])

    async def device(self, store: str, device_id: str) -> DeviceRow | None:
        row = await self._c.fetchrow(f"SELECT {_DEVICE_COLUMNS} FROM devices "
                                     "WHERE store = $1 AND device_id = $2", store, device_id)
        return _device(row)

    async def heads(self, store: str, devices: Iterable[str]) -> dict[str, tuple[int, bytes]]:
        await self._own(store)
        rows = await self._c.fetch(_HEADS_OF, store, list(devices))
        return {r[0]: (int(r[1]), bytes(r[2])) for r in rows}

    async def known_client_ids(self, store: str, client_ids: Sequence[str]) -> dict[str, bytes]:
        await self._own(store)
        rows = await self._c.fetch("SELECT client_id, hash FROM entries WHERE store = $1 AND "
                                   "client_id = ANY($2::text[])", store, list(client_ids))
        return {r[0]: bytes(r[1]) for r in rows}

    async def entries(self, store: str, client_ids: Sequence[str]) -> list[Entry]:
        await self._own(store)
        rows = await self._c.fetch(
            "SELECT client_id, device_id, seq, prev, kind, client_created_at, ticket, body, "
            "sig FROM entries WHERE store = $1 AND client_id = ANY($2::text[])",
            store, list(client_ids))
        return [Entry(r[0], r[1], int(r[2]), bytes(r[3]), r[4], r[5], r[6], bytes(r[7]),
                      bytes(r[8])) for r in rows]

    async def insert_entries(self, store: str, entries: Sequence[Entry], at: str) -> None:
        await self._own(store)
        if not entries:
            return
        # One statement for the whole batch: unnest() of column arrays is several times
        # faster than a row per statement, even pipelined.
        await self._c.execute(
            "INSERT INTO entries (store, device_id, seq, client_id, prev, kind, "
            "client_created_at, ticket, body, sig, hash, received_at) "
            "SELECT $1, * , $12 FROM unnest($2::text[], $3::bigint[], $4::text[], "
            "$5::bytea[], $6::text[], $7::text[], $8::text[], $9::bytea[], $10::bytea[], "
            "$11::bytea[])",
            store, [e.device_id for e in entries], [e.seq for e in entries],
            [e.client_id for e in entries], [e.prev for e in entries],
            [e.kind for e in entries], [e.client_created_at for e in entries],
            [e.ticket for e in entries], [e.body_bytes for e in entries],
            [e.sig for e in entries], [e.hash for e in entries], at)

    async def counters(self, store: str, names: Iterable[str]) -> dict[str, int]:
        await self._own(store)
        names = list(names)
        rows = await self._c.fetch("SELECT name, value FROM counters WHERE store = $1 AND "
                                   "name = ANY($2::text[])", store, names)
        found = {r[0]: int(r[1]) for r in rows}
        return {n: found.get(n, 0) for n in names}

    async def set_counters(self, store: str, values: dict[str, int]) -> None:
        await self._own(store)
        await self._c.execute(
            "INSERT INTO counters (store, name, value) "
            "SELECT $1, * FROM unnest($2::text[], $3::bigint[]) "
            "ON CONFLICT (store, name) DO UPDATE SET value = excluded.value",
            store, list(values), list(values.values()))

    async def stream_head(self, store: str) -> tuple[int, bytes]:
        await self._own(store)
        row = await self._c.fetchrow("SELECT seq, hash FROM stream_heads WHERE store = $1",
                                     store)
        return (int(row[0]), bytes(row[1])) if row else (0, _ZERO)

    async def set_stream_head(self, store: str, seq: int, head: bytes) -> None:
        await self._own(store)
        await self._c.execute("UPDATE stream_heads SET seq = $2, hash = $3 WHERE store = $1",
                              store, seq, head)
        # Delivered when (and only if) this transaction commits.
        await self._c.execute("SELECT pg_notify($1, $2)", CHANNEL,
                              f"{self._token}:receipts:{store}")

    async def insert_receipts(self, store: str, receipts: Sequence[dict[str, Any]],
                              packed: Sequence[bytes]) -> None:
        await self._own(store)
        if not receipts:
            return
        await self._c.execute(
            "INSERT INTO receipts (store, server_seq, client_id, data) "
            "SELECT $1, * FROM unnest($2::bigint[], $3::text[], $4::bytea[])",
            store, [r["server_seq"] for r in receipts], [r["client_id"] for r in receipts],
            list(packed))

    async def mappings(self, store: str, kind: str, client_ids: Iterable[str]) -> dict[str, str]:
        await self._own(store)
        rows = await self._c.fetch(
            "SELECT client_id, server_id FROM mappings WHERE store = $1 AND kind = $2 AND "
            "client_id = ANY($3::text[])", store, kind, list(client_ids))
        return {r[0]: r[1] for r in rows}

    async def add_mappings(self, store: str, kind: str, rows: dict[str, str]) -> None:
        await self._own(store)
        await self._c.execute(
            "INSERT INTO mappings (store, kind, client_id, server_id) "
            "SELECT $1, $2, * FROM unnest($3::text[], $4::text[])",
            store, kind, list(rows), list(rows.values()))

    async def waiting_for(self, store: str, dependencies: Iterable[str]) -> list[str]:
        await self._own(store)
        deps = list(dependencies)
        if not deps:
            return []
        rows = await self._c.fetch(
            "DELETE FROM waiting WHERE store = $1 AND waiting_for = ANY($2::text[]) "
            "RETURNING client_id", store, deps)
        return list(dict.fromkeys(r[0] for r in rows))

    async def add_waiting(self, store: str, rows: Sequence[tuple[str, str]]) -> None:
        await self._own(store)
        await self._c.execute(
            "INSERT INTO waiting (store, client_id, waiting_for) "
            "SELECT $1, * FROM unnest($2::text[], $3::text[]) ON CONFLICT DO NOTHING",
            store, [c for c, _ in rows], [w for _, w in rows])

    async def stock(self, store: str, product_ids: Iterable[str]) -> dict[str, int]:
        await self._own(store)
        ids = list(product_ids)
        rows = await self._c.fetch("SELECT product_id, qty FROM stock WHERE store = $1 AND "
                                   "product_id = ANY($2::text[])", store, ids)
        return {r[0]: int(r[1]) for r in rows}

    async def set_stock(self, store: str, levels: dict[str, int]) -> None:
        await self._own(store)
        await self._c.execute(
            "INSERT INTO stock (store, product_id, qty) "
            "SELECT $1, * FROM unnest($2::text[], $3::bigint[]) "
            "ON CONFLICT (store, product_id) DO UPDATE SET qty = excluded.qty",
            store, list(levels), list(levels.values()))

    async def set_prices(self, store: str, prices: dict[str, tuple[int, str]]) -> None:
        await self._own(store)
        await self._c.execute(
            "INSERT INTO prices (store, product_id, price, at) "
            "SELECT $1, * FROM unnest($2::text[], $3::bigint[], $4::text[]) "
            "ON CONFLICT (store, product_id) DO UPDATE SET price = excluded.price, "
            "at = excluded.at WHERE excluded.at >= prices.at",
            store, list(prices), [v for v, _ in prices.values()],
            [at for _, at in prices.values()])

    async def add_invoices(self, store: str, rows: Sequence[tuple[Any, ...]]) -> None:
        await self._own(store)
        columns = list(zip(*rows, strict=True))
        await self._c.execute(
            "INSERT INTO invoices (store, series, invoice_no, client_id, device_id, ticket, "
            "total, client_created_at, issued_at, seq) SELECT $1, * FROM unnest($2::text[], "
            "$3::bigint[], $4::text[], $5::text[], $6::text[], $7::bigint[], $8::text[], "
            "$9::text[], $10::bigint[])", store, *(list(c) for c in columns))

    async def add_alerts(self, store: str, rows: Sequence[tuple[Any, ...]]) -> None:
        await self._own(store)
        await self._c.executemany(
            "INSERT INTO alerts (store, client_id, product_id, qty, reorder_level, at) "
            "VALUES ($1, $2, $3, $4, $5, $6)", [(store, *r) for r in rows])

    async def add_rejected(self, store: str, rows: Sequence[tuple[Any, ...]]) -> None:
        await self._own(store)
        await self._c.executemany(
            "INSERT INTO rejected (store, client_id, device_id, seq, code, message, entry, at, "
            "sent_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)", [(store, *r) for r in rows])

    async def add_tallies(self, store: str,
                          writes: Sequence[tuple[str, list[tuple[Any, ...]]]]) -> None:
        await self._own(store)
        for sql, rows in writes:
            assert all(r[0] == store for r in rows)
            await self._c.executemany(_dollars(sql), rows)

    async def rejected(self, store: str, client_ids: Sequence[str]) -> set[tuple[str, str]]:
        await self._own(store)
        rows = await self._c.fetch("SELECT client_id, code FROM rejected WHERE store = $1 AND "
                                   "client_id = ANY($2::text[])", store, list(client_ids))
        return {(r[0], r[1]) for r in rows}


Listener = Callable[[str, str], None]


class PostgresStorage:
    """``RelayStorage`` on a PostgreSQL database shared by any number of relay processes."""

    shared = True  # other processes may write: hubs must follow the database

    def __init__(self, pool: asyncpg.Pool, url: str) -> None:
        self._pool = pool
        self.url = url
        self.token = os.urandom(6).hex()  # tells this process's notifications apart
        self._listeners: list[Listener] = []
        self._listen_task: asyncio.Task[None] | None = None

    # -- opening -------------------------------------------------------------------------

    @classmethod
    async def open(cls, url: str, *, wait: float = 60.0, migrate: bool = True,
                   pool_size: int = 8) -> PostgresStorage:
        """Connect (retrying with backoff for up to ``wait`` seconds while the database
        cannot be reached), bring the schema up to date if ``migrate``, and check it."""
        conn = await connect_retrying(url, wait)
        try:
            version = await (migrate_schema(conn) if migrate else schema_version(conn))
        finally:
            await conn.close()
        if version != SCHEMA_VERSION:
            raise StoreError(
                f"{describe(url)}: relay schema version {version}, this relay needs "
                f"{SCHEMA_VERSION}; run `tillsync relay migrate --db URL`" if version
                < SCHEMA_VERSION else f"{describe(url)}: relay schema version {version} is "
                "newer than this relay knows: upgrade tillsync")
        pool = await asyncpg.create_pool(url, min_size=1, max_size=pool_size,
                                         command_timeout=60)
        return cls(pool, url)

    async def close(self) -> None:
        if self._listen_task is not None:  # cancel_and_wait: never eats a cancellation of ours
            await cancel_and_wait([self._listen_task], Deadlines().cancel, "database listener")
        await self._pool.close()

    def retryable(self, exc: BaseException) -> bool:
        return isinstance(exc, _RETRYABLE)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_Txn]:
        async with self._pool.acquire() as conn, conn.transaction():
            yield _Txn(conn, self.token)

    # -- change notifications between relay processes ------------------------------------

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(kind, store)`` when another process commits receipts
        (``"receipts"``) or document changes (``"document"``) of a store; after a lost
        listening connection is back, ``listener("resync", "")``."""
        self._listeners.append(listener)
        if self._listen_task is None:
            self._listen_task = asyncio.create_task(self._listen(), name="relay-listen")

    def _dispatch(self, kind: str, store: str) -> None:
        for listener in self._listeners:
            try:
                listener(kind, store)
            except Exception:
                log.exception("listener failed on %s %s", kind, store)

    async def _listen(self) -> None:
        delay = 0.1
        first = True
        while True:
            try:
                conn = await asyncpg.connect(self.url)
            except Exception as exc:
                log.warning("cannot listen for other relay processes at %s: %s; retrying "
                            "in %.1f s", describe(self.url), exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            lost = asyncio.Event()

            def on_notify(_conn: object, _pid: int, _channel: str, payload: object) -> None:
                token, kind, store = str(payload).split(":", 2)
                if token != self.token:
                    self._dispatch(kind, store)

            try:
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(CHANNEL, on_notify)
                delay = 0.1
                if not first:  # whatever was sent while we were away: read it all again
                    self._dispatch("resync", "")
                first = False
                while not lost.is_set() and not conn.is_closed():
                    try:
                        await asyncio.wait_for(lost.wait(), 5.0)
                    except TimeoutError:
                        await conn.execute("SELECT 1")  # notices a silently dead link
            except asyncio.CancelledError:
                await conn.close(timeout=2)
                raise
            except Exception as exc:
                log.warning("listening connection lost: %s", exc)
            finally:
                if not conn.is_closed():
                    conn.terminate()

    # -- devices and enrollment ----------------------------------------------------------

    async def device(self, store: str, device_id: str) -> DeviceRow | None:
        row = await self._pool.fetchrow(f"SELECT {_DEVICE_COLUMNS} FROM devices "
                                        "WHERE store = $1 AND device_id = $2", store, device_id)
        return _device(row)

    async def add_admin_token(self, store: str, token_hash: bytes, now: str) -> None:
        await self._pool.execute("INSERT INTO admin_tokens VALUES ($1, $2, $3)",
                                 token_hash, store, now)

    async def read(self, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in await self._pool.fetch(_dollars(sql), *args)]

    async def store_key(self, store: str) -> tuple[bytes | None, bytes | None] | None:
        row = await self._pool.fetchrow("SELECT public_key, sealed FROM store_keys "
                                        "WHERE store = $1", store)
        return (row["public_key"], row["sealed"]) if row is not None else None

    async def add_store_key(self, store: str, public_key: bytes, sealed: bytes,
                            now: str) -> None:
        await self._pool.execute("INSERT INTO store_keys VALUES ($1, $2, $3, $4) "
                                 "ON CONFLICT DO NOTHING", store, public_key, sealed, now)

    async def devices(self, store: str) -> list[DeviceRow]:
        rows = await self._pool.fetch(f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE store = $1 "
                                      "ORDER BY name", store)
        return [d for d in (_device(r) for r in rows) if d is not None]

    async def add_code(self, store: str, code_hash: bytes, name: str, role: str,
                       expires_at: str) -> None:
        await self._pool.execute(
            "INSERT INTO enroll_codes (code_hash, store, name, role, expires_at) "
            "VALUES ($1, $2, $3, $4, $5)", code_hash, store, name, role, expires_at)

    async def enroll(self, code_hash: bytes, device_id: str, name: str, public_key: bytes,
                     now: str) -> DeviceRow | str:
        """Use a one-time code (locked, so two processes cannot both use it)."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT store, name, role, used_at, expires_at FROM enroll_codes "
                "WHERE code_hash = $1 FOR UPDATE", code_hash)
            refusal = code_refusal(row is not None, row["used_at"] if row else None,
                                   row["expires_at"] if row else "", now)
            if refusal is not None or row is None:
                return refusal or ""
            store, code_name, role = row["store"], row["name"], row["role"]
            inserted = await conn.fetchval(
                "INSERT INTO devices (store, device_id, name, public_key, role, enrolled_at) "
                "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING 1",
                store, device_id, code_name or name, public_key, role, now)
            if inserted is None:
                return "a device with this id is already enrolled in this store"
            await conn.execute("UPDATE enroll_codes SET used_at = $2, used_by = $3 "
                               "WHERE code_hash = $1", code_hash, now, device_id)
        found = await self.device(store, device_id)
        assert found is not None
        return found

    async def revoke(self, store: str, device_id: str, now: str) -> DeviceRow | None:
        async with self.transaction() as txn:
            # The store's ingest lock: no batch of the device commits meanwhile, so its
            # head read now is exactly what was ingested before the revocation.
            await txn.lock([store])
            await txn._c.execute(
                "UPDATE devices SET revoked_at = $3, revoked_upto = (SELECT coalesce(max(seq), "
                "0) FROM entries WHERE store = $1 AND device_id = $2) WHERE store = $1 AND "
                "device_id = $2 AND revoked_at IS NULL", store, device_id, now)
            return await txn.device(store, device_id)

    async def revocations(self, store: str) -> list[DeviceRow]:
        rows = await self._pool.fetch(f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE store = $1 "
                                      "AND revoked_at IS NOT NULL ORDER BY device_id", store)
        return [d for d in (_device(r) for r in rows) if d is not None]

    async def touch(self, store: str, device_id: str, now: str) -> None:
        await self._pool.execute("UPDATE devices SET last_seen = $3 WHERE store = $1 AND "
                                 "device_id = $2", store, device_id, now)

    # -- what devices read ---------------------------------------------------------------

    async def heads(self, store: str) -> dict[str, int]:
        rows = await self._pool.fetch(_ALL_HEADS, store, store, store)
        return {r[0]: int(r[1]) for r in rows}

    async def receipts_after(self, store: str, after: int, limit: int) -> list[dict[str, Any]]:
        rows = await self._pool.fetch(
            "SELECT data FROM receipts WHERE store = $1 AND server_seq > $2 "
            "ORDER BY server_seq LIMIT $3", store, after, limit)
        return [msgpack.unpackb(r[0], raw=False) for r in rows]

    async def stream_position(self, store: str) -> int:
        seq = await self._pool.fetchval("SELECT seq FROM stream_heads WHERE store = $1", store)
        return int(seq) if seq is not None else 0

    # -- master documents ----------------------------------------------------------------

    async def document(self, store: str) -> bytes:
        return (await self.document_at(store))[0]

    async def document_at(self, store: str) -> tuple[bytes, int]:
        """The whole document (snapshot + changes) and its position: the highest change
        id it includes.  One snapshot of the database, so the two agree."""
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read",
                                                                  readonly=True):
            snap = await conn.fetchrow("SELECT data, upto FROM doc_snapshot WHERE store = $1",
                                       store)
            chunks = await conn.fetch("SELECT id, data FROM doc_changes WHERE store = $1 "
                                      "ORDER BY id", store)
        position = max([int(snap[1]) if snap else 0, *(int(c[0]) for c in chunks)])
        data = (bytes(snap[0]) if snap else b"") + b"".join(bytes(c[1]) for c in chunks)
        return data, position

    async def document_position(self, store: str) -> int:
        value = await self._pool.fetchval(
            "SELECT greatest((SELECT upto FROM doc_snapshot WHERE store = $1), "
            "(SELECT max(id) FROM doc_changes WHERE store = $1))", store)
        return int(value or 0)

    async def document_sizes(self, store: str) -> tuple[int, int]:
        row = await self._pool.fetchrow(
            "SELECT (SELECT coalesce(sum(length(data)), 0) FROM doc_snapshot WHERE store = $1),"
            " (SELECT coalesce(sum(length(data)), 0) FROM doc_changes WHERE store = $1)",
            store)
        assert row is not None
        return int(row[0]), int(row[1])

    async def init_document(self, store: str, genesis: bytes) -> None:
        """Store ``genesis`` as the store's document unless one is there already."""
        await self._pool.execute("INSERT INTO doc_snapshot (store, data) VALUES ($1, $2) "
                                 "ON CONFLICT (store) DO NOTHING", store, genesis)

    async def append_document(self, store: str, chunks: Sequence[bytes]) -> tuple[int, int]:
        """Append change chunks; returns (position before, position after)."""
        async with self._pool.acquire() as conn, conn.transaction():
            locked = await conn.fetchval("SELECT upto FROM doc_snapshot WHERE store = $1 "
                                         "FOR UPDATE", store)
            if locked is None:
                raise RuntimeError(f"store {store} has no document to append to")
            before = await conn.fetchval("SELECT max(id) FROM doc_changes WHERE store = $1",
                                         store)
            ids = await conn.fetch(
                "INSERT INTO doc_changes (store, data) SELECT $1, unnest($2::bytea[]) "
                "RETURNING id", store, list(chunks))
            await conn.execute("SELECT pg_notify($1, $2)", CHANNEL,
                               f"{self.token}:document:{store}")
        start = max(int(locked), int(before or 0))
        return start, max([start, *(int(r[0]) for r in ids)])

    async def compact_document(self, store: str, snapshot: bytes, upto: int = 0) -> None:
        """Replace the changes up to ``upto`` (all of which ``snapshot`` includes) by it."""
        async with self._pool.acquire() as conn, conn.transaction():
            current = await conn.fetchval("SELECT upto FROM doc_snapshot WHERE store = $1 "
                                          "FOR UPDATE", store)
            if current is None:
                await conn.execute("INSERT INTO doc_snapshot (store, data, upto) "
                                   "VALUES ($1, $2, $3)", store, snapshot, upto)
            elif upto > int(current):  # never go back behind another process's compaction
                await conn.execute("UPDATE doc_snapshot SET data = $2, upto = $3 "
                                   "WHERE store = $1", store, snapshot, upto)
                await conn.execute("DELETE FROM doc_changes WHERE store = $1 AND id <= $2",
                                   store, upto)


# -- connecting and migrating ----------------------------------------------------------


async def connect_retrying(url: str, wait: float) -> asyncpg.Connection:
    """One connection; while the database cannot be reached, retry with backoff (and
    jitter) for up to ``wait`` seconds, saying so in the log, then raise
    ``DatabaseUnavailable`` with the last reason."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    delay = 0.25
    while True:
        try:
            conn: asyncpg.Connection = await asyncpg.connect(url, timeout=10)
            return conn
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError | asyncpg.
                          InvalidCatalogNameError | asyncpg.InvalidPasswordError):
                raise DatabaseUnavailable(f"cannot use PostgreSQL at {describe(url)}: "
                                          f"{reason}") from None
            left = deadline - loop.time()
            if left <= 0:
                raise DatabaseUnavailable(
                    f"cannot reach PostgreSQL at {describe(url)} after {wait:.0f} s: "
                    f"{reason}") from None
            pause = min(delay, left) * random.uniform(0.5, 1.0)
            log.warning("cannot reach PostgreSQL at %s: %s; retrying in %.1f s",
                        describe(url), reason, pause)
            await asyncio.sleep(pause)
            delay = min(delay * 2, 5.0)


_ALL_HEADS = _dollars(ALL_HEADS)  # arguments: the store, three times

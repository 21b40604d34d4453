"""The relay's SQLite backend (the default): one file, WAL, ``synchronous=FULL``.

SQLite has one writer at a time, and ``BEGIN IMMEDIATE`` takes the write lock at the
start of every ingest transaction, so counters read inside it cannot change under it:
that is what makes invoice numbers gapless here.  Receipts are msgpack blobs keyed by
(store, server_seq).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite
import msgpack

from tillsync.peer.log import Entry
from tillsync.relay import counter_checks, tallies
from tillsync.relay.storage.base import ALL_HEADS, DeviceRow, code_refusal

SCHEMA_VERSION = 10
# Page cache of each connection, in KiB (SQLite's default is 2 MiB).  Every sale inserts
# into an index keyed by random UUIDs (entries' client_id): once it outgrows the cache,
# each insert rereads pages from the OS.
CACHE_KIB = 65536
# The invoice register is the fiscal record: once a number is issued its row stays.
_INVOICES_APPEND_ONLY = """
CREATE TRIGGER invoices_append_only_update BEFORE UPDATE ON invoices
    BEGIN SELECT RAISE(ABORT, 'invoices are append-only'); END;
CREATE TRIGGER invoices_append_only_delete BEFORE DELETE ON invoices
    BEGIN SELECT RAISE(ABORT, 'invoices are append-only'); END;
"""
# The invoice register.  A sale is numbered once, whatever the code above does: one
# invoice per sale's place in its device's chain, (device_id, seq), which the entries
# table holds once each with one client_id.  (Schema 5 and before: UNIQUE (store,
# client_id), an index on random UUIDs that each sale wrote into at a random page.)
_INVOICES = """
CREATE TABLE {} (
    store TEXT NOT NULL, series TEXT NOT NULL, invoice_no INTEGER NOT NULL,
    client_id TEXT NOT NULL, device_id TEXT NOT NULL, ticket TEXT, total INTEGER NOT NULL,
    client_created_at TEXT NOT NULL, issued_at TEXT NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (store, series, invoice_no),
    UNIQUE (store, device_id, seq)
) WITHOUT ROWID;
"""
# Schema 6 rebuilds the register with its entries' seq; an invoice without its entry
# (there is none) would fail NOT NULL and leave the database as it was.
_INVOICES_BY_SEQ = _INVOICES.format("invoices_6") + """
INSERT INTO invoices_6 (store, series, invoice_no, client_id, device_id, ticket, total,
                        client_created_at, issued_at, seq)
    SELECT store, series, invoice_no, client_id, device_id, ticket, total, client_created_at,
        issued_at, (SELECT seq FROM entries e WHERE e.store = i.store
                    AND e.client_id = i.client_id AND e.device_id = i.device_id)
    FROM invoices i;
DROP TABLE invoices;
ALTER TABLE invoices_6 RENAME TO invoices;
""" + tallies.INVOICES_BY_TIME + _INVOICES_APPEND_ONLY
_PRICES_AT = "ALTER TABLE prices ADD COLUMN at TEXT NOT NULL DEFAULT '';"
# Each store's signing key, sealed (relay/storekeys.py).  A row without one: the store
# signs with the relay's own key (stores made before schema 5 keep it).
_STORE_KEYS = """
CREATE TABLE IF NOT EXISTS store_keys (store TEXT PRIMARY KEY, public_key BLOB, sealed BLOB,
                         created_at TEXT NOT NULL);
"""
_KEEP_RELAY_KEY = """
INSERT OR IGNORE INTO store_keys (store, created_at)
    SELECT store, 'before store keys' FROM devices UNION SELECT store, 'before store keys'
    FROM enroll_codes;
"""
# Who sent each rejected entry (rows kept from before: not known).
_REJECTED_SENT_BY = "ALTER TABLE rejected ADD COLUMN sent_by TEXT;"
_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE devices (
    store TEXT NOT NULL, device_id TEXT NOT NULL, name TEXT NOT NULL,
    public_key BLOB NOT NULL, role TEXT NOT NULL, enrolled_at TEXT NOT NULL,
    revoked_at TEXT, last_seen TEXT, revoked_upto INTEGER,
    PRIMARY KEY (store, device_id)
) WITHOUT ROWID;
CREATE TABLE enroll_codes (
    code_hash BLOB PRIMARY KEY, store TEXT NOT NULL, name TEXT NOT NULL, role TEXT NOT NULL,
    expires_at TEXT NOT NULL, used_at TEXT, used_by TEXT
);
CREATE TABLE entries (
    store TEXT NOT NULL, device_id TEXT NOT NULL, seq INTEGER NOT NULL,
    client_id TEXT NOT NULL, prev BLOB NOT NULL, kind TEXT NOT NULL,
    client_created_at TEXT NOT NULL, ticket TEXT, body BLOB NOT NULL, sig BLOB NOT NULL,
    hash BLOB NOT NULL, received_at TEXT NOT NULL,
    PRIMARY KEY (store, device_id, seq),
    UNIQUE (store, client_id)
) WITHOUT ROWID;
CREATE TRIGGER entries_append_only_update BEFORE UPDATE ON entries
    BEGIN SELECT RAISE(ABORT, 'entries are append-only'); END;
CREATE TRIGGER entries_append_only_delete BEFORE DELETE ON entries
    BEGIN SELECT RAISE(ABORT, 'entries are append-only'); END;
CREATE TABLE receipts (
    store TEXT NOT NULL, server_seq INTEGER NOT NULL, client_id TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (store, server_seq)
) WITHOUT ROWID;
CREATE TRIGGER receipts_append_only_update BEFORE UPDATE ON receipts
    BEGIN SELECT RAISE(ABORT, 'receipts are append-only'); END;
CREATE TRIGGER receipts_append_only_delete BEFORE DELETE ON receipts
    BEGIN SELECT RAISE(ABORT, 'receipts are append-only'); END;
CREATE TABLE stream_heads (store TEXT PRIMARY KEY, seq INTEGER NOT NULL, hash BLOB NOT NULL);
CREATE TABLE counters (
    store TEXT NOT NULL, name TEXT NOT NULL, value INTEGER NOT NULL,
    PRIMARY KEY (store, name)
) WITHOUT ROWID;
""" + _INVOICES.format("invoices") + """
CREATE TABLE mappings (
    store TEXT NOT NULL, kind TEXT NOT NULL, client_id TEXT NOT NULL, server_id TEXT NOT NULL,
    PRIMARY KEY (store, kind, client_id)
) WITHOUT ROWID;
CREATE TABLE waiting (
    store TEXT NOT NULL, client_id TEXT NOT NULL, waiting_for TEXT NOT NULL,
    PRIMARY KEY (store, waiting_for, client_id)
) WITHOUT ROWID;
CREATE TABLE stock (
    store TEXT NOT NULL, product_id TEXT NOT NULL, qty INTEGER NOT NULL,
    PRIMARY KEY (store, product_id)
) WITHOUT ROWID;
CREATE TABLE prices (
    store TEXT NOT NULL, product_id TEXT NOT NULL, price INTEGER NOT NULL,
    at TEXT NOT NULL DEFAULT '',  -- the sale's place (peer.views.order_of): latest wins
    PRIMARY KEY (store, product_id)
) WITHOUT ROWID;
CREATE TABLE alerts (
    store TEXT NOT NULL, client_id TEXT NOT NULL, product_id TEXT NOT NULL,
    qty INTEGER NOT NULL, reorder_level INTEGER NOT NULL, at TEXT NOT NULL
);
CREATE TABLE rejected (
    store TEXT NOT NULL, client_id TEXT NOT NULL, device_id TEXT NOT NULL,
    seq INTEGER NOT NULL, code TEXT NOT NULL, message TEXT NOT NULL, entry BLOB NOT NULL,
    at TEXT NOT NULL,
    sent_by TEXT  -- the device whose link carried the entry; NULL: from before schema 7
);
CREATE INDEX rejected_by_client ON rejected (store, client_id);
CREATE TABLE doc_snapshot (store TEXT PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE doc_changes (id INTEGER PRIMARY KEY, store TEXT NOT NULL, data BLOB NOT NULL);
CREATE INDEX doc_changes_by_store ON doc_changes (store, id);
CREATE TABLE admin_tokens (token_hash BLOB PRIMARY KEY, store TEXT NOT NULL,
                           created_at TEXT NOT NULL);
""" + tallies.SCHEMA + tallies.REPORTS_SCHEMA + _INVOICES_APPEND_ONLY + _STORE_KEYS \
    + tallies.INVOICES_BY_TICKET


# Upgrades of an older relay database, each to the next version, in one transaction.
_MIGRATIONS = {
    "1": "ALTER TABLE devices ADD COLUMN revoked_upto INTEGER;",
    "2": "CREATE TABLE IF NOT EXISTS admin_tokens (token_hash BLOB PRIMARY KEY, "
         "store TEXT NOT NULL, created_at TEXT NOT NULL);",
    "3": tallies.SCHEMA + _INVOICES_APPEND_ONLY + _PRICES_AT,  # filled at "7"
    "4": _STORE_KEYS + _KEEP_RELAY_KEY,
    "5": _INVOICES_BY_SEQ,
    "6": _REJECTED_SENT_BY,
    "7": tallies.REPORTS_SCHEMA,  # every total filled again: ``_FILLS``
    "8": "",  # customers' balances set from the entries held: ``_FILLS``
    "9": tallies.INVOICES_BY_TICKET,
}


# What a migration computes from the entries held, after its SQL: the running totals
# (schema 4's, and schema 8's of refunds, expenses, cash movements and listed items) and
# customers' balances (schema 9).
_FILLS: dict[str, Callable[[counter_checks.Read, counter_checks.Write], Awaitable[object]]] = {
    "7": tallies.rebuild, "8": counter_checks.rebuild_balances}


async def _fill(conn: aiosqlite.Connection, version: str) -> None:
    """Run the fill of the migration from ``version``, if it has one, on ``conn``."""
    async def read(sql: str, args: Sequence[object]) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in await conn.execute_fetchall(sql, args)]

    async def write(sql: str, rows: list[tuple[Any, ...]]) -> None:
        await conn.executemany(sql, rows)

    if version in _FILLS:
        await _FILLS[version](read, write)


# The index of the entries table's UNIQUE (store, client_id) (SQLite names it; checked at
# open).  Without ANALYZE statistics the planner answers ``store = ? AND client_id IN
# (...)`` by scanning every entry of the store along the primary key instead: a cost
# that grows with the store's history, paid by every ingested batch.
_ENTRIES_CLIENT_ID_INDEX = "sqlite_autoindex_entries_2"
_BY_CLIENT_ID = f"INDEXED BY {_ENTRIES_CLIENT_ID_INDEX}"


# The heads of some devices, with one primary-key probe each (SQLite answers ``max(seq)``
# under an equality on (store, device_id) from the index's end), never by walking their
# entries: ``device_id IN (...) AND seq = (SELECT max(seq) ...)`` read every entry of the
# store, a cost that grew with its history (about 0.8 s a commit at a million entries).
_HEADS_OF = """
WITH d(device_id) AS (VALUES {})
SELECT e.device_id, e.seq, e.hash FROM d JOIN entries e
    ON e.store = ?1 AND e.device_id = d.device_id
    AND e.seq = (SELECT max(seq) FROM entries m WHERE m.store = ?1 AND m.device_id = d.device_id)
"""


def heads_of(devices: int) -> str:
    """``_HEADS_OF`` for this many devices: arguments (store, *devices)."""
    return _HEADS_OF.format(", ".join(f"(?{n})" for n in range(2, devices + 2)))


def _marks(values: Sequence[object]) -> str:
    return ", ".join("?" * len(values))


def _device(row: Sequence[Any] | None) -> DeviceRow | None:
    if row is None:
        return None
    return DeviceRow(row[0], row[1], row[2], bytes(row[3]), row[4], row[5], row[6])


_DEVICE_COLUMNS = "store, device_id, name, public_key, role, revoked_at, revoked_upto"


class _Txn:
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._c = conn

    async def lock(self, stores: Iterable[str]) -> None:
        """Nothing to do: ``BEGIN IMMEDIATE`` holds the one write lock already."""

    async def _rows(self, sql: str, args: Sequence[object] = ()) -> list[Any]:
        return list(await self._c.execute_fetchall(sql, args))

    async def device(self, store: str, device_id: str) -> DeviceRow | None:
        rows = await self._rows(f"SELECT {_DEVICE_COLUMNS} FROM devices "
                                "WHERE store = ? AND device_id = ?", (store, device_id))
        return _device(rows[0] if rows else None)

    async def heads(self, store: str, devices: Iterable[str]) -> dict[str, tuple[int, bytes]]:
        devices = list(devices)
        out: dict[str, tuple[int, bytes]] = {}
        for i in range(0, len(devices), 500):
            part = devices[i:i + 500]
            rows = await self._rows(heads_of(len(part)), (store, *part))
            out.update({r[0]: (int(r[1]), bytes(r[2])) for r in rows})
        return out

    async def known_client_ids(self, store: str, client_ids: Sequence[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for i in range(0, len(client_ids), 500):
            part = client_ids[i:i + 500]
            rows = await self._rows(f"SELECT client_id, hash FROM entries {_BY_CLIENT_ID} "
                                    f"WHERE store = ? AND client_id IN ({_marks(part)})",
                                    (store, *part))
            out.update({r[0]: bytes(r[1]) for r in rows})
        return out

    async def entries(self, store: str, client_ids: Sequence[str]) -> list[Entry]:
        out: list[Entry] = []
        for i in range(0, len(client_ids), 500):
            part = client_ids[i:i + 500]
            rows = await self._rows(
                "SELECT client_id, device_id, seq, prev, kind, client_created_at, ticket, "
                f"body, sig FROM entries {_BY_CLIENT_ID} WHERE store = ? AND client_id IN "
                f"({_marks(part)})",
                (store, *part))
            out.extend(Entry(r[0], r[1], r[2], bytes(r[3]), r[4], r[5], r[6], bytes(r[7]),
                             bytes(r[8])) for r in rows)
        return out

    async def insert_entries(self, store: str, entries: Sequence[Entry], at: str) -> None:
        await self._c.executemany(
            "INSERT INTO entries (store, device_id, seq, client_id, prev, kind, "
            "client_created_at, ticket, body, sig, hash, received_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(store, e.device_id, e.seq, e.client_id, e.prev, e.kind, e.client_created_at,
              e.ticket, e.body_bytes, e.sig, e.hash, at) for e in entries])

    async def counters(self, store: str, names: Iterable[str]) -> dict[str, int]:
        names = list(names)
        rows = await self._rows(f"SELECT name, value FROM counters WHERE store = ? AND name IN "
                                f"({_marks(names)})", (store, *names))
        found = {r[0]: int(r[1]) for r in rows}
        return {n: found.get(n, 0) for n in names}

    async def set_counters(self, store: str, values: dict[str, int]) -> None:
        await self._c.executemany(
            "INSERT INTO counters (store, name, value) VALUES (?, ?, ?) "
            "ON CONFLICT (store, name) DO UPDATE SET value = excluded.value",
            [(store, n, v) for n, v in values.items()])

    async def stream_head(self, store: str) -> tuple[int, bytes]:
        rows = await self._rows("SELECT seq, hash FROM stream_heads WHERE store = ?", (store,))
        return (int(rows[0][0]), bytes(rows[0][1])) if rows else (0, bytes(32))

    async def set_stream_head(self, store: str, seq: int, head: bytes) -> None:
        await self._c.execute(
            "INSERT INTO stream_heads (store, seq, hash) VALUES (?, ?, ?) "
            "ON CONFLICT (store) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
            (store, seq, head))

    async def insert_receipts(self, store: str, receipts: Sequence[dict[str, Any]],
                              packed: Sequence[bytes]) -> None:
        await self._c.executemany(
            "INSERT INTO receipts (store, server_seq, client_id, data) VALUES (?, ?, ?, ?)",
            [(store, r["server_seq"], r["client_id"], data)
             for r, data in zip(receipts, packed, strict=True)])

    async def mappings(self, store: str, kind: str, client_ids: Iterable[str]) -> dict[str, str]:
        ids = list(client_ids)
        out: dict[str, str] = {}
        for i in range(0, len(ids), 500):
            part = ids[i:i + 500]
            rows = await self._rows(
                "SELECT client_id, server_id FROM mappings WHERE store = ? AND kind = ? AND "
                f"client_id IN ({_marks(part)})", (store, kind, *part))
            out.update({r[0]: r[1] for r in rows})
        return out

    async def add_mappings(self, store: str, kind: str, rows: dict[str, str]) -> None:
        await self._c.executemany(
            "INSERT INTO mappings (store, kind, client_id, server_id) VALUES (?, ?, ?, ?)",
            [(store, kind, c, s) for c, s in rows.items()])

    async def waiting_for(self, store: str, dependencies: Iterable[str]) -> list[str]:
        deps = list(dependencies)
        if not deps:
            return []
        rows = await self._rows(f"SELECT client_id FROM waiting WHERE store = ? AND waiting_for "
                                f"IN ({_marks(deps)})", (store, *deps))
        await self._c.execute(f"DELETE FROM waiting WHERE store = ? AND waiting_for IN "
                              f"({_marks(deps)})", (store, *deps))
        return list(dict.fromkeys(r[0] for r in rows))

    async def add_waiting(self, store: str, rows: Sequence[tuple[str, str]]) -> None:
        await self._c.executemany(
            "INSERT OR IGNORE INTO waiting (store, client_id, waiting_for) VALUES (?, ?, ?)",
            [(store, c, w) for c, w in rows])

    async def stock(self, store: str, product_ids: Iterable[str]) -> dict[str, int]:
        ids = list(product_ids)
        rows = await self._rows(f"SELECT product_id, qty FROM stock WHERE store = ? AND "
                                f"product_id IN ({_marks(ids)})", (store, *ids))
        return {r[0]: int(r[1]) for r in rows}

    async def set_stock(self, store: str, levels: dict[str, int]) -> None:
        await self._c.executemany(
            "INSERT INTO stock (store, product_id, qty) VALUES (?, ?, ?) "
            "ON CONFLICT (store, product_id) DO UPDATE SET qty = excluded.qty",
            [(store, p, q) for p, q in levels.items()])

    async def set_prices(self, store: str, prices: dict[str, tuple[int, str]]) -> None:
        await self._c.executemany(
            "INSERT INTO prices (store, product_id, price, at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (store, product_id) DO UPDATE SET price = excluded.price, "
            "at = excluded.at WHERE excluded.at >= prices.at",
            [(store, p, v, at) for p, (v, at) in prices.items()])

    async def add_invoices(self, store: str, rows: Sequence[tuple[Any, ...]]) -> None:
        await self._c.executemany(
            "INSERT INTO invoices (store, series, invoice_no, client_id, device_id, ticket, "
            "total, client_created_at, issued_at, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(store, *r) for r in rows])

    async def add_alerts(self, store: str, rows: Sequence[tuple[Any, ...]]) -> None:
        await self._c.executemany(
            "INSERT INTO alerts (store, client_id, product_id, qty, reorder_level, at) "
            "VALUES (?, ?, ?, ?, ?, ?)", [(store, *r) for r in rows])

    async def add_rejected(self, store: str, rows: Sequence[tuple[Any, ...]]) -> None:
        await self._c.executemany(
            "INSERT INTO rejected (store, client_id, device_id, seq, code, message, entry, at, "
            "sent_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", [(store, *r) for r in rows])

    async def add_tallies(self, store: str,
                          writes: Sequence[tuple[str, list[tuple[Any, ...]]]]) -> None:
        for sql, rows in writes:
            assert all(r[0] == store for r in rows)
            await self._c.executemany(sql, rows)


    async def rejected(self, store: str, client_ids: Sequence[str]) -> set[tuple[str, str]]:
        out: set[tuple[str, str]] = set()
        for i in range(0, len(client_ids), 500):
            part = client_ids[i:i + 500]
            rows = await self._rows(f"SELECT client_id, code FROM rejected WHERE store = ? AND "
                                    f"client_id IN ({_marks(part)})", (store, *part))
            out.update((r[0], r[1]) for r in rows)
        return out


_TOUCH = "UPDATE devices SET last_seen = ? WHERE store = ? AND device_id = ?"


class SQLiteStorage:
    """``RelayStorage`` on one SQLite file, for one relay process (documents are kept
    in step by that process alone; several processes need the PostgreSQL backend)."""

    shared = False

    def __init__(self, conn: aiosqlite.Connection, reader: aiosqlite.Connection,
                 path: Path) -> None:
        # Two connections: writes (one transaction at a time, behind a lock) and reads,
        # which in WAL mode see only committed data even while a write is in flight.
        self._conn = conn
        self._reader = reader
        self.path = path
        self._txn = _Txn(conn)
        self._write_lock = asyncio.Lock()
        self._touches: dict[tuple[str, str], str] = {}  # logins not written yet

    @classmethod
    async def open(cls, path: Path) -> SQLiteStorage:
        conn = await aiosqlite.connect(path, isolation_level=None)
        try:
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute("PRAGMA synchronous=FULL")
            await conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            tables = list(await conn.execute_fetchall("SELECT count(*) FROM sqlite_master"))
            if tables[0][0] == 0:
                await conn.executescript(_SCHEMA)
                await conn.execute("INSERT INTO meta VALUES ('schema_version', ?)",
                                   (str(SCHEMA_VERSION),))
            rows = list(await conn.execute_fetchall(
                "SELECT value FROM meta WHERE key = 'schema_version'"))
            version = str(rows[0][0]) if rows else ""
            while version in _MIGRATIONS:
                await conn.executescript(f"BEGIN IMMEDIATE; {_MIGRATIONS[version]}")
                await _fill(conn, version)
                # execute, not executescript: that would commit what is pending first
                await conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                                   (str(int(version) + 1),))
                await conn.execute("COMMIT")
                version = str(int(version) + 1)
        except sqlite3.DatabaseError as exc:
            await conn.close()
            raise RuntimeError(f"{path} is damaged or not a tillsync relay database: {exc}") \
                from None
        if version != str(SCHEMA_VERSION):
            await conn.close()
            raise RuntimeError(f"{path}: unsupported relay schema version")
        columns = [r[2] for r in await conn.execute_fetchall(
            f"PRAGMA index_info({_ENTRIES_CLIENT_ID_INDEX})")]
        if columns != ["store", "client_id"]:
            await conn.close()
            raise RuntimeError(f"{path}: the entries table has no index "
                               f"{_ENTRIES_CLIENT_ID_INDEX} on (store, client_id)")
        reader = await aiosqlite.connect(path, isolation_level=None)
        await reader.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        return cls(conn, reader, path)

    async def close(self) -> None:
        await self._reader.close()
        await self._conn.close()

    def retryable(self, exc: BaseException) -> bool:
        return False  # one writer, no lost connections: a failure is a real one

    def subscribe(self, listener: Callable[[str, str], None]) -> None:
        """No other process writes this file: nothing to listen for."""

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_Txn]:
        async with self._write_lock:
            await self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._txn
            except BaseException:
                await self._conn.execute("ROLLBACK")
                raise
            await self._conn.execute("COMMIT")

    async def _rows(self, sql: str, args: Sequence[object] = ()) -> list[Any]:
        return list(await self._reader.execute_fetchall(sql, args))

    # -- devices and enrollment --------------------------------------------------------

    async def device(self, store: str, device_id: str) -> DeviceRow | None:
        rows = await self._rows(f"SELECT {_DEVICE_COLUMNS} FROM devices "
                                "WHERE store = ? AND device_id = ?", (store, device_id))
        return _device(rows[0] if rows else None)

    async def read(self, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in await self._rows(sql, args)]

    async def add_admin_token(self, store: str, token_hash: bytes, now: str) -> None:
        async with self.transaction():
            await self._conn.execute("INSERT INTO admin_tokens VALUES (?, ?, ?)",
                                     (token_hash, store, now))

    async def store_key(self, store: str) -> tuple[bytes | None, bytes | None] | None:
        rows = await self._rows("SELECT public_key, sealed FROM store_keys WHERE store = ?",
                                (store,))
        return (rows[0][0], rows[0][1]) if rows else None

    async def add_store_key(self, store: str, public_key: bytes, sealed: bytes,
                            now: str) -> None:
        async with self.transaction():
            await self._conn.execute("INSERT INTO store_keys VALUES (?, ?, ?, ?) "
                                     "ON CONFLICT DO NOTHING", (store, public_key, sealed, now))

    async def devices(self, store: str) -> list[DeviceRow]:
        rows = await self._rows(f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE store = ? "
                                "ORDER BY name", (store,))
        return [d for d in (_device(r) for r in rows) if d is not None]

    async def add_code(self, store: str, code_hash: bytes, name: str, role: str,
                       expires_at: str) -> None:
        async with self.transaction():
            await self._conn.execute(
                "INSERT INTO enroll_codes (code_hash, store, name, role, expires_at) "
                "VALUES (?, ?, ?, ?, ?)", (code_hash, store, name, role, expires_at))

    async def enroll(self, code_hash: bytes, device_id: str, name: str, public_key: bytes,
                     now: str) -> DeviceRow | str:
        """Use a one-time code: register the device; or say why not (the code stays
        unused when the device is refused)."""
        async with self.transaction():
            rows = list(await self._conn.execute_fetchall(
                "SELECT store, name, role, used_at, expires_at FROM enroll_codes "
                "WHERE code_hash = ?", (code_hash,)))
            refusal = code_refusal(bool(rows), rows[0][3] if rows else None,
                                   rows[0][4] if rows else "", now)
            if refusal is not None:
                return refusal
            store, code_name, role = rows[0][:3]
            taken = list(await self._conn.execute_fetchall(
                "SELECT 1 FROM devices WHERE store = ? AND device_id = ?", (store, device_id)))
            if taken:
                return "a device with this id is already enrolled in this store"
            await self._conn.execute(
                "UPDATE enroll_codes SET used_at = ?, used_by = ? WHERE code_hash = ?",
                (now, device_id, code_hash))
            await self._conn.execute(
                "INSERT INTO devices (store, device_id, name, public_key, role, enrolled_at) "
                "VALUES (?, ?, ?, ?, ?, ?)", (store, device_id, code_name or name, public_key,
                                              role, now))
        row = await self.device(store, device_id)
        assert row is not None
        return row

    async def revoke(self, store: str, device_id: str, now: str) -> DeviceRow | None:
        # BEGIN IMMEDIATE holds the one write lock: no batch of the device is being
        # ingested meanwhile, so its head now is exactly what was ingested before.
        async with self.transaction():
            await self._conn.execute(
                "UPDATE devices SET revoked_at = ?, revoked_upto = (SELECT coalesce(max(seq), 0) "
                "FROM entries WHERE store = ? AND device_id = ?) WHERE store = ? AND "
                "device_id = ? AND revoked_at IS NULL", (now, store, device_id, store, device_id))
            rows = list(await self._conn.execute_fetchall(
                f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE store = ? AND device_id = ?",
                (store, device_id)))
        return _device(rows[0] if rows else None)

    async def revocations(self, store: str) -> list[DeviceRow]:
        rows = await self._rows(f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE store = ? AND "
                                "revoked_at IS NOT NULL ORDER BY device_id", (store,))
        return [d for d in (_device(r) for r in rows) if d is not None]

    async def touch(self, store: str, device_id: str, now: str) -> None:
        """Note a login.  Logins that come while another's write is under way are written
        together, in one transaction, by the first of them to get the write lock; each
        call returns once its own time is stored (or raises if that failed)."""
        self._touches[(store, device_id)] = now
        async with self._write_lock:
            batch, self._touches = self._touches, {}
            if not batch:
                return  # a login that came meanwhile wrote this one too
            rows = [(at, st, dev) for (st, dev), at in batch.items()]
            try:
                if len(rows) == 1:  # one statement: a transaction of its own
                    await self._conn.execute(_TOUCH, rows[0])
                    return
                await self._conn.execute("BEGIN IMMEDIATE")
                try:
                    await self._conn.executemany(_TOUCH, rows)
                except BaseException:
                    await self._conn.execute("ROLLBACK")
                    raise
                await self._conn.execute("COMMIT")
            except BaseException:
                # Not stored: the next login's write takes these along (newer times win).
                self._touches = batch | self._touches
                raise

    # -- what devices read -------------------------------------------------------------

    async def heads(self, store: str) -> dict[str, int]:
        rows = await self._rows(ALL_HEADS, (store,) * 3)
        return {r[0]: int(r[1]) for r in rows}

    async def receipts_after(self, store: str, after: int, limit: int) -> list[dict[str, Any]]:
        rows = await self._rows("SELECT data FROM receipts WHERE store = ? AND server_seq > ? "
                                "ORDER BY server_seq LIMIT ?", (store, after, limit))
        return [msgpack.unpackb(r[0], raw=False) for r in rows]

    async def stream_position(self, store: str) -> int:
        rows = await self._rows("SELECT seq FROM stream_heads WHERE store = ?", (store,))
        return int(rows[0][0]) if rows else 0

    # -- master documents --------------------------------------------------------------

    async def document(self, store: str) -> bytes:
        snap = await self._rows("SELECT data FROM doc_snapshot WHERE store = ?", (store,))
        chunks = await self._rows("SELECT data FROM doc_changes WHERE store = ? ORDER BY id",
                                  (store,))
        return (bytes(snap[0][0]) if snap else b"") + b"".join(bytes(c[0]) for c in chunks)

    async def document_at(self, store: str) -> tuple[bytes, int]:
        return await self.document(store), 0  # one process: never behind, no positions

    async def document_position(self, store: str) -> int:
        return 0

    async def init_document(self, store: str, genesis: bytes) -> None:
        async with self.transaction():
            await self._conn.execute("INSERT OR IGNORE INTO doc_snapshot (store, data) "
                                     "VALUES (?, ?)", (store, genesis))

    async def document_sizes(self, store: str) -> tuple[int, int]:
        rows = await self._rows(
            "SELECT (SELECT coalesce(sum(length(data)), 0) FROM doc_snapshot WHERE store = ?),"
            " (SELECT coalesce(sum(length(data)), 0) FROM doc_changes WHERE store = ?)",
            (store, store))
        return int(rows[0][0]), int(rows[0][1])

    async def append_document(self, store: str, chunks: Sequence[bytes]) -> tuple[int, int]:
        async with self.transaction():
            await self._conn.executemany("INSERT INTO doc_changes (store, data) VALUES (?, ?)",
                                         [(store, c) for c in chunks])
        return 0, 0

    async def compact_document(self, store: str, snapshot: bytes, upto: int = 0) -> None:
        """The one process's document holds every change: they all go."""
        async with self.transaction():
            await self._conn.execute(
                "INSERT INTO doc_snapshot (store, data) VALUES (?, ?) "
                "ON CONFLICT (store) DO UPDATE SET data = excluded.data", (store, snapshot))
            await self._conn.execute("DELETE FROM doc_changes WHERE store = ?", (store,))

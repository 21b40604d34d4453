"""The till's SQLite file, behind a narrow interface.

One file, ``till.db``, in WAL mode with ``synchronous=FULL``: a transaction that has
committed survives a crash of the process and of the machine.  Log entries can only be
inserted: triggers refuse UPDATE and DELETE, and no code path issues either.

The master document is kept as one snapshot plus change chunks appended after it;
``compact`` replaces both in one transaction, so a crash mid-compaction leaves either the
old snapshot with every chunk, or the new snapshot.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiosqlite

from tillsync.peer.diskfault import disk_fault as disk_fault  # also for peer.store
from tillsync.peer.diskfault import open_lock_file as open_lock_file  # for peer.store
from tillsync.peer.errors import StoreCorrupt
from tillsync.peer.files import ENTRY_FIELDS, entry_file_name
from tillsync.peer.log.entry import Entry
from tillsync.peer.views import Effect, from_stored, to_stored

SCHEMA_VERSION = 7

# Version 6: the ticket history (sales by client time, newest first) and a sale by its ticket, read
# page by page: only sales carry a ticket, so only they are in these indexes.
_TICKETS = """
CREATE INDEX IF NOT EXISTS entries_by_time ON entries (client_created_at, ticket)
    WHERE ticket IS NOT NULL;
CREATE INDEX IF NOT EXISTS entries_by_ticket ON entries (ticket) WHERE ticket IS NOT NULL;
"""

# Version 7: forwarded entries kept but counted for nothing in the views, with the shift
# rule they break as judged on their arrival (``Till.receive_entries``); the views are
# rebuilt by the same verdicts.
_UNCOUNTED = """
CREATE TABLE IF NOT EXISTS uncounted (client_id TEXT PRIMARY KEY, code TEXT NOT NULL) WITHOUT ROWID;
"""
_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE devices (
    device_id TEXT PRIMARY KEY,
    public_key BLOB NOT NULL,
    name TEXT NOT NULL,
    cert BLOB  -- the relay's certificate of the device, once known
);
CREATE TABLE entries (
    device_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    client_id TEXT NOT NULL UNIQUE,
    prev BLOB NOT NULL,
    kind TEXT NOT NULL,
    client_created_at TEXT NOT NULL,
    ticket TEXT,
    body BLOB NOT NULL,
    hash BLOB NOT NULL,
    sig BLOB NOT NULL,
    PRIMARY KEY (device_id, seq)
) WITHOUT ROWID;
CREATE TRIGGER entries_append_only_update BEFORE UPDATE ON entries
    BEGIN SELECT RAISE(ABORT, 'log entries are append-only'); END;
CREATE TRIGGER entries_append_only_delete BEFORE DELETE ON entries
    BEGIN SELECT RAISE(ABORT, 'log entries are append-only'); END;
CREATE TABLE receipts (
    client_id TEXT PRIMARY KEY,
    server_seq INTEGER NOT NULL,
    status TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE receipt_stream (  -- the relay's stream as received, to forward on the LAN
    server_seq INTEGER PRIMARY KEY,
    body BLOB NOT NULL
);
CREATE TABLE views (
    view TEXT NOT NULL,
    key TEXT NOT NULL,
    value INTEGER NOT NULL,  -- stock in millionths; money, flags whole (views.to_stored)
    at TEXT NOT NULL DEFAULT '',  -- a "set" value's entry place (peer.views.order_of)
    PRIMARY KEY (view, key)
) WITHOUT ROWID;
CREATE TABLE doc_snapshot (id INTEGER PRIMARY KEY CHECK (id = 1), data BLOB NOT NULL);
CREATE TABLE doc_changes (id INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE revocations (  -- the relay's signed revocations, to check and forward
    device_id TEXT PRIMARY KEY,
    upto INTEGER NOT NULL,  -- the device's entries after this seq are refused
    record BLOB NOT NULL
);
""" + _TICKETS + _UNCOUNTED
_REVOCATIONS = """
CREATE TABLE revocations (device_id TEXT PRIMARY KEY, upto INTEGER NOT NULL,
                          record BLOB NOT NULL);
"""

# Upgrades of an older store, run in one transaction by a writable open.
_VIEWS_AT = "ALTER TABLE views ADD COLUMN at TEXT NOT NULL DEFAULT '';"
# Version 5: only the stock view is kept in millionths; money and flags as they are.
_VIEWS_SCALE = "UPDATE views SET value = value / 1000000 WHERE view != 'stock';"
_MIGRATIONS = {
    "1": """
ALTER TABLE devices ADD COLUMN cert BLOB;
CREATE TABLE receipt_stream (server_seq INTEGER PRIMARY KEY, body BLOB NOT NULL);
INSERT INTO receipt_stream (server_seq, body) SELECT server_seq, body FROM receipts;
""" + _REVOCATIONS + _VIEWS_AT + _VIEWS_SCALE + _TICKETS + _UNCOUNTED,
    "2": _REVOCATIONS + _VIEWS_AT + _VIEWS_SCALE + _TICKETS + _UNCOUNTED,
    "3": _VIEWS_AT + _VIEWS_SCALE + _TICKETS + _UNCOUNTED,
    "4": _VIEWS_SCALE + _TICKETS + _UNCOUNTED,
    "5": _TICKETS + _UNCOUNTED,
    "6": _UNCOUNTED,
}

_ENTRY_COLUMNS = "client_id, device_id, seq, prev, kind, client_created_at, ticket, body, sig"


def _row_to_entry(row: Sequence[Any]) -> Entry:
    return Entry(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8])


class TillDB:
    """The few queries the till needs; nothing else touches SQL."""

    def __init__(self, conn: aiosqlite.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self._file_names: set[str] | None = None  # see file_names

    @classmethod
    async def open(cls, path: Path, *, create: bool = False, readonly: bool = False) -> TillDB:
        uri = f"file:{path}?mode={'ro' if readonly else 'rwc' if create else 'rw'}"
        try:
            conn = await aiosqlite.connect(uri, uri=True, isolation_level=None)
        except sqlite3.Error as exc:
            raise disk_fault(path, exc) or StoreCorrupt(
                f"{path}: cannot open the database: {exc}") from None
        db = cls(conn, path)
        try:
            if not readonly:
                await conn.execute("PRAGMA journal_mode=WAL")
                await conn.execute("PRAGMA synchronous=FULL")
            await conn.execute("PRAGMA foreign_keys=ON")
            if create:
                await conn.executescript(_SCHEMA)
                await db.set_meta({"schema_version": str(SCHEMA_VERSION)})
            version = await db.meta("schema_version")
            if not readonly and version in _MIGRATIONS:
                try:  # one transaction: all of it or none
                    await conn.executescript(
                        f"BEGIN IMMEDIATE; {_MIGRATIONS[version]} UPDATE meta SET value = "
                        f"'{SCHEMA_VERSION}' WHERE key = 'schema_version'; COMMIT;")
                except BaseException:
                    await db.rollback()
                    raise
                version = str(SCHEMA_VERSION)
        except sqlite3.DatabaseError as exc:
            await conn.close()
            raise disk_fault(path, exc) or StoreCorrupt(
                f"{path} is damaged or is not a tillsync store ({exc}); "
                "nothing was changed: keep the file for recovery"
            ) from None
        if version != str(SCHEMA_VERSION):
            await conn.close()
            hint = " (open it writable once to upgrade it)" if version in _MIGRATIONS else ""
            raise StoreCorrupt(f"{path}: unsupported store schema version {version!r}{hint}")
        return db

    async def close(self) -> None:
        await self._conn.close()

    async def _one(self, sql: str, args: Sequence[object] = ()) -> Any:
        """The first row of a query, in one trip to the database thread."""
        rows = await self._conn.execute_fetchall(sql, args)
        return next(iter(rows), None)

    # -- transactions ------------------------------------------------------------------

    async def begin(self) -> None:
        await self._conn.execute("BEGIN IMMEDIATE")

    async def commit(self) -> None:
        await self._conn.execute("COMMIT")

    async def rollback(self) -> None:
        if self._conn.in_transaction:
            await self._conn.execute("ROLLBACK")

    # -- meta and devices --------------------------------------------------------------

    async def meta(self, key: str) -> str | None:
        row = await self._one("SELECT value FROM meta WHERE key = ?", (key,))
        return None if row is None else str(row[0])

    async def set_meta(self, values: dict[str, str]) -> None:
        await self._conn.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            values.items(),
        )

    async def add_device(self, device_id: str, public_key: bytes, name: str) -> None:
        await self._conn.execute(
            "INSERT OR IGNORE INTO devices (device_id, public_key, name) VALUES (?, ?, ?)",
            (device_id, public_key, name),
        )

    async def devices(self) -> dict[str, tuple[bytes, str]]:
        async with self._conn.execute("SELECT device_id, public_key, name FROM devices") as cur:
            return {row[0]: (bytes(row[1]), row[2]) async for row in cur}

    async def certs(self) -> dict[str, bytes]:
        """device id -> certificate, for the devices whose certificate is known."""
        async with self._conn.execute(
            "SELECT device_id, cert FROM devices WHERE cert IS NOT NULL"
        ) as cur:
            return {row[0]: bytes(row[1]) async for row in cur}

    async def put_certs(self, certs: Sequence[tuple[str, bytes, str, bytes]]) -> None:
        """(device id, public key, name, cert): add the device, or attach the certificate
        to a device already known with that key."""
        await self._conn.executemany(
            "INSERT INTO devices (device_id, public_key, name, cert) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (device_id) DO UPDATE SET cert = excluded.cert "
            "WHERE devices.public_key = excluded.public_key",
            certs,
        )

    async def revocations(self) -> dict[str, tuple[int, bytes]]:
        """device id -> (upto, signed record), for the devices known to be revoked."""
        async with self._conn.execute("SELECT device_id, upto, record FROM revocations") as cur:
            return {row[0]: (int(row[1]), bytes(row[2])) async for row in cur}

    async def put_revocations(self, rows: Sequence[tuple[str, int, bytes]]) -> None:
        """(device id, upto, record); a revocation is final, the first one kept stays."""
        await self._conn.executemany(
            "INSERT OR IGNORE INTO revocations (device_id, upto, record) VALUES (?, ?, ?)", rows)

    async def heads(self) -> dict[str, tuple[int, bytes]]:
        """The last entry (seq, hash) of every device this store holds entries of."""
        out: dict[str, tuple[int, bytes]] = {}
        for device_id in await self.devices():
            head = await self.head(device_id)
            if head is not None:
                out[device_id] = head
        return out

    # -- log ---------------------------------------------------------------------------

    async def insert_entries(self, entries: Iterable[Entry]) -> None:
        await self._conn.executemany(
            f"INSERT INTO entries ({_ENTRY_COLUMNS}, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (e.client_id, e.device_id, e.seq, e.prev, e.kind, e.client_created_at,
                 e.ticket, e.body_bytes, e.sig, e.hash)
                for e in entries
            ],
        )
        if self._file_names is not None:  # a rolled-back insert only keeps a file longer
            self._file_names.update(entry_file_name(e.kind, e.body_bytes) for e in entries
                                    if e.kind in ENTRY_FIELDS)
            self._file_names.discard("")

    async def file_names(self) -> set[str]:
        """The files the log's entries name (``peer.files.ENTRY_FIELDS``): read once,
        then kept up to date by ``insert_entries``."""
        if self._file_names is None:
            kinds = list(ENTRY_FIELDS)
            rows = await self._conn.execute_fetchall(
                f"SELECT kind, body FROM entries WHERE kind IN ({', '.join('?' * len(kinds))})",
                kinds)
            self._file_names = {entry_file_name(kind, body) for kind, body in rows} - {""}
        return set(self._file_names)

    async def add_uncounted(self, rows: Sequence[tuple[str, str]]) -> None:
        """(client_id, code) of forwarded entries kept but counted for nothing."""
        await self._conn.executemany(
            "INSERT OR IGNORE INTO uncounted (client_id, code) VALUES (?, ?)", rows)

    async def uncounted(self) -> dict[str, str]:
        return {row[0]: row[1] for row in await self._conn.execute_fetchall(
            "SELECT client_id, code FROM uncounted")}

    async def head(self, device_id: str) -> tuple[int, bytes] | None:
        row = await self._one(
            "SELECT seq, hash FROM entries WHERE device_id = ? ORDER BY seq DESC LIMIT 1",
            (device_id,),
        )
        return None if row is None else (int(row[0]), bytes(row[1]))

    async def last_ticket(self, device_id: str) -> str | None:
        row = await self._one(
            "SELECT ticket FROM entries WHERE device_id = ? AND ticket IS NOT NULL "
            "ORDER BY seq DESC LIMIT 1",
            (device_id,),
        )
        return None if row is None else str(row[0])

    async def entry(self, client_id: str) -> Entry | None:
        row = await self._one(
            f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE client_id = ?", (client_id,)
        )
        return None if row is None else _row_to_entry(row)

    async def tickets(self, start: str | None, end: str | None, limit: int,
                      ticket: str | None = None) -> list[tuple[Entry, bytes | None]]:
        """Sales with a ticket (that ticket, or any), newest first by client time within
        [start, end), each with its receipt's body if one came: by the ticket indexes,
        so a page costs what it holds, not the length of the log."""
        where, args = ["e.ticket IS NOT NULL", "e.kind = 'sale'"], []
        for clause, value in (("e.ticket = ?", ticket), ("e.client_created_at >= ?", start),
                              ("e.client_created_at < ?", end)):
            if value is not None:
                where.append(clause)
                args.append(value)
        columns = ", ".join(f"e.{name}" for name in _ENTRY_COLUMNS.split(", "))
        rows = await self._conn.execute_fetchall(
            f"SELECT {columns}, r.body FROM entries e LEFT JOIN receipts r ON r.client_id = "
            f"e.client_id WHERE {' AND '.join(where)} ORDER BY e.client_created_at DESC, "
            "e.ticket DESC LIMIT ?", (*args, limit))
        return [(_row_to_entry(r), None if r[9] is None else bytes(r[9])) for r in rows]

    async def holders(self, client_ids: Sequence[str]) -> dict[str, tuple[str, int]]:
        """client_id -> (device, seq) of the entries already stored, among ``client_ids``."""
        out: dict[str, tuple[str, int]] = {}
        for start in range(0, len(client_ids), 500):  # SQLite's parameter limit
            chunk = client_ids[start:start + 500]
            rows = await self._conn.execute_fetchall(
                "SELECT client_id, device_id, seq FROM entries WHERE client_id IN "
                f"({', '.join('?' * len(chunk))})", chunk)
            out.update({r[0]: (r[1], int(r[2])) for r in rows})
        return out

    async def entries(
        self, device_id: str | None = None, after_seq: int = 0, kind: str | None = None
    ) -> AsyncIterator[tuple[Entry, bytes]]:
        """Entries with their stored hash, by device then seq."""
        where, args = ["seq > ?"], [after_seq]
        if device_id is not None:
            where.append("device_id = ?")
            args.append(device_id)  # type: ignore[arg-type]
        if kind is not None:
            where.append("kind = ?")
            args.append(kind)  # type: ignore[arg-type]
        sql = (
            f"SELECT {_ENTRY_COLUMNS}, hash FROM entries WHERE {' AND '.join(where)} "
            "ORDER BY device_id, seq"
        )
        async with self._conn.execute(sql, args) as cur:
            async for row in cur:
                yield _row_to_entry(row), bytes(row[9])

    async def count_entries(self) -> dict[str, int]:
        async with self._conn.execute(
            "SELECT kind, count(*) FROM entries GROUP BY kind ORDER BY kind"
        ) as cur:
            return {row[0]: int(row[1]) async for row in cur}

    async def entries_after(self, device_id: str, after_seq: int, upto_seq: int, limit: int
                            ) -> list[Entry]:
        rows = await self._conn.execute_fetchall(
            f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE device_id = ? AND seq > ? "
            "AND seq <= ? ORDER BY seq LIMIT ?", (device_id, after_seq, upto_seq, limit))
        return [_row_to_entry(r) for r in rows]

    async def store_receipts(self, receipts: Sequence[tuple[str, int, str, bytes]]) -> None:
        """Keep the latest receipt of each entry (a later one supersedes: waiting, then
        accepted).  An acceptance is final: a rejection after it is about another entry
        sent under the same client_id (a conflicting copy), not about the accepted one."""
        await self._conn.executemany(
            "INSERT INTO receipts (client_id, server_seq, status, body) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (client_id) DO UPDATE SET server_seq = excluded.server_seq, "
            "status = excluded.status, body = excluded.body "
            "WHERE excluded.server_seq > receipts.server_seq "
            "AND receipts.status != 'accepted'",
            receipts,
        )

    async def append_stream(self, receipts: Sequence[tuple[int, bytes]]) -> None:
        """(server_seq, body) of receipts continuing the relay's stream."""
        await self._conn.executemany(
            "INSERT OR IGNORE INTO receipt_stream (server_seq, body) VALUES (?, ?)", receipts)

    async def stream_after(self, after_seq: int, limit: int) -> list[bytes]:
        """Bodies of the receipts after ``after_seq`` in stream order, stopping at a gap
        (a store upgraded from schema 1 holds only the latest receipt of each entry)."""
        rows = await self._conn.execute_fetchall(
            "SELECT server_seq, body FROM receipt_stream WHERE server_seq > ? "
            "ORDER BY server_seq LIMIT ?", (after_seq, limit))
        out: list[bytes] = []
        for expected, (seq, body) in enumerate(rows, after_seq + 1):
            if seq != expected:
                break
            out.append(bytes(body))
        return out

    async def receipt(self, client_id: str) -> bytes | None:
        """The latest receipt of one entry, as stored."""
        row = await self._one("SELECT body FROM receipts WHERE client_id = ?", (client_id,))
        return None if row is None else bytes(row[0])

    async def receipts(self, status: str | None = None) -> list[bytes]:
        sql = "SELECT body FROM receipts"
        args: tuple[str, ...] = ()
        if status is not None:
            sql, args = sql + " WHERE status = ?", (status,)
        rows = await self._conn.execute_fetchall(sql + " ORDER BY server_seq", args)
        return [bytes(r[0]) for r in rows]

    async def count_receipts(self, status: str) -> int:
        row = await self._one("SELECT count(*) FROM receipts WHERE status = ?", (status,))
        return int(row[0]) if row else 0

    async def pending(self, limit: int) -> tuple[int, list[Entry]]:
        """Entries with no receipt yet: how many, and the oldest ``limit`` of them.  A
        revoked device's entries after its revocation are not pending: no till passes
        them on and the relay refuses them (``peer enroll --new-device`` carries this
        till's own over)."""
        unacked = "FROM entries e WHERE NOT EXISTS " \
            "(SELECT 1 FROM receipts r WHERE r.client_id = e.client_id) AND NOT EXISTS " \
            "(SELECT 1 FROM revocations v WHERE v.device_id = e.device_id AND e.seq > v.upto)"
        async with self._conn.execute(f"SELECT count(*) {unacked}") as cur:
            row = await cur.fetchone()
        count = int(row[0]) if row else 0
        async with self._conn.execute(
            f"SELECT {', '.join('e.' + c for c in _ENTRY_COLUMNS.split(', '))} {unacked} "
            "ORDER BY e.client_created_at LIMIT ?",
            (limit,),
        ) as cur:
            rows = await cur.fetchall()
        return count, [_row_to_entry(r) for r in rows]

    async def integrity_check(self) -> list[str]:
        async with self._conn.execute("PRAGMA integrity_check") as cur:
            rows = await cur.fetchall()
        problems = [str(r[0]) for r in rows]
        return [] if problems == ["ok"] else problems

    # -- views -------------------------------------------------------------------------

    async def view(self, view: str) -> dict[str, Decimal]:
        async with self._conn.execute(
            "SELECT key, value FROM views WHERE view = ?", (view,)
        ) as cur:
            return {row[0]: from_stored(view, row[1]) async for row in cur}

    async def view_value(self, view: str, key: str) -> Decimal | None:
        row = await self._one(
            "SELECT value FROM views WHERE view = ? AND key = ?", (view, key)
        )
        return None if row is None else from_stored(view, row[0])

    async def shift_state(self, shift_client_id: str) -> str | None:
        """'closed', 'open' or None, in one query."""
        row = await self._one(
            "SELECT min(view) FROM views WHERE key = ? "  # closed sorts first
            "AND view IN ('shift_opened', 'shift_closed')",
            (shift_client_id,),
        )
        state = None if row is None else row[0]
        return {"shift_closed": "closed", "shift_opened": "open"}.get(state or "")

    async def apply_effects(self, effects: Sequence[Effect]) -> None:
        """Fold effects into the views in one statement: SQLite sums the additions, and
        keeps the latest "set" by its entry's place (``Effect.at``), not by arrival."""
        if effects:
            await self._conn.executemany(
                "INSERT INTO views (view, key, value, at) VALUES (?1, ?2, ?3, ?5) "
                "ON CONFLICT (view, key) DO UPDATE SET "
                "value = CASE WHEN NOT ?4 THEN value + excluded.value "
                "WHEN excluded.at >= at THEN excluded.value ELSE value END, "
                "at = CASE WHEN ?4 AND excluded.at >= at THEN excluded.at ELSE at END",
                [(e.view, e.key, to_stored(e.view, e.value), e.op == "set", e.at)
                 for e in effects],
            )

    # -- master document ---------------------------------------------------------------

    async def document(self) -> tuple[bytes, int, int]:
        """Snapshot followed by every change chunk; sizes of the snapshot and the chunks."""
        async with self._conn.execute("SELECT data FROM doc_snapshot WHERE id = 1") as cur:
            row = await cur.fetchone()
        snapshot = bytes(row[0]) if row else b""
        async with self._conn.execute("SELECT data FROM doc_changes ORDER BY id") as cur:
            chunks = [bytes(r[0]) async for r in cur]
        tail = b"".join(chunks)
        return snapshot + tail, len(snapshot), len(tail)

    async def append_changes(self, chunks: Sequence[bytes]) -> None:
        await self._conn.executemany(
            "INSERT INTO doc_changes (data) VALUES (?)", [(c,) for c in chunks]
        )

    async def commit_changes(self, chunks: Sequence[bytes]) -> None:
        """Append change chunks in a transaction of their own, as ONE statement: SQLite
        makes a single statement atomic by itself, so this is one trip to the database
        thread instead of three (begin, insert, commit); a LAN edit waits on it."""
        await self._conn.execute(
            "INSERT INTO doc_changes (data) VALUES " + ", ".join(["(?)"] * len(chunks)), chunks)

    async def document_sizes(self) -> tuple[int, int, int]:
        """Number of change chunks, bytes of the snapshot, bytes of the chunks."""
        row = await self._one(
            "SELECT (SELECT count(*) FROM doc_changes), "
            "(SELECT coalesce(sum(length(data)), 0) FROM doc_snapshot), "
            "(SELECT coalesce(sum(length(data)), 0) FROM doc_changes)"
        )
        assert row is not None
        return int(row[0]), int(row[1]), int(row[2])

    async def compact_inside(self, snapshot: bytes) -> None:
        """Replace snapshot and chunks by ``snapshot`` within the current transaction."""
        await self._conn.execute(
            "INSERT INTO doc_snapshot (id, data) VALUES (1, ?) "
            "ON CONFLICT (id) DO UPDATE SET data = excluded.data",
            (snapshot,),
        )
        await self._conn.execute("DELETE FROM doc_changes")

    async def compact(self, snapshot: bytes) -> None:
        """Replace snapshot and chunks by ``snapshot`` in one transaction of its own:
        a crash before COMMIT leaves the old snapshot and every chunk."""
        await self.begin()
        try:
            await self.compact_inside(snapshot)
            await self.commit()
        except BaseException:
            await self.rollback()
            raise

    async def checkpoint(self) -> None:
        await self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

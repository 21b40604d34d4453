"""Finding the invoice a ticket became (``relay.reports.invoice_of_ticket``: the HTTP
API's ``invoices?ticket=`` and ``tillsync report invoices --ticket``) reads the invoice
register's index by ticket, not every invoice of the store: on a fresh relay database
and on one migrated from the schema before that index, on both backends."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import asyncpg

from tillsync.relay.reports import TICKET_LOOKUP
from tillsync.relay.server import DB_FILE, Relay
from tillsync.relay.storage import pg_schema
from tillsync.relay.storage import sqlite as sqlite_storage

_ARGS = ("shop", "TILL1-000042")


async def _plan(data: Path, db: str | None) -> str:
    """How the database answers the report's lookup, as its EXPLAIN prints it."""
    if db is None:
        conn = sqlite3.connect(data / DB_FILE)
        try:
            return " ".join(str(r[-1]) for r in conn.execute(
                f"EXPLAIN QUERY PLAN {TICKET_LOOKUP}", _ARGS).fetchall())
        finally:
            conn.close()
    pg = await asyncpg.connect(db)
    try:
        # An empty table is cheapest to scan: ask whether the index can answer at all.
        await pg.execute("SET enable_seqscan = off")
        numbered = TICKET_LOOKUP.replace("store = ?", "store = $1").replace("ticket = ?",
                                                                           "ticket = $2")
        return " ".join(r[0] for r in await pg.fetch(f"EXPLAIN {numbered}", *_ARGS))
    finally:
        await pg.close()


async def _forget_the_index(data: Path, db: str | None) -> None:
    """Make the database what the schema before the index left."""
    if db is None:
        conn = sqlite3.connect(data / DB_FILE)
        try:
            conn.execute("DROP INDEX invoices_by_ticket")
            conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                         (str(sqlite_storage.SCHEMA_VERSION - 1),))
            conn.commit()
        finally:
            conn.close()
        return
    pg = await asyncpg.connect(db)
    try:
        await pg.execute("DROP INDEX invoices_by_ticket")
        await pg.execute("DELETE FROM schema_version WHERE version = $1",
                         pg_schema.SCHEMA_VERSION)
    finally:
        await pg.close()


async def test_a_ticket_is_found_through_the_index_fresh_and_after_the_migration(
        tmp_path: Path, relay_db: str | None) -> None:
    relay = await Relay.open(tmp_path, relay_db)
    await relay.close()
    assert "invoices_by_ticket" in await _plan(tmp_path, relay_db)

    await _forget_the_index(tmp_path, relay_db)
    assert "invoices_by_ticket" not in await _plan(tmp_path, relay_db)
    relay = await Relay.open(tmp_path, relay_db)  # migrates
    await relay.close()
    assert "invoices_by_ticket" in await _plan(tmp_path, relay_db)

"""Fresh PostgreSQL databases for relay tests: one per test (or per module), made from
the server at ``TILLSYNC_TEST_PG`` and dropped afterwards.

The server must be reachable: in CI a test on the PostgreSQL backend fails (never
skips) when it is not, so CI cannot go green without proving the PostgreSQL relay;
elsewhere it is skipped with the reason (``tests.services``).  `.ci/run` starts the local
server first; to leave these tests out by hand: ``-m "not postgres"``.
"""

from __future__ import annotations

import asyncio
import functools
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from tests.services import unavailable

ADMIN_URL = os.environ.get("TILLSYNC_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def _run(coro_factory: object) -> object:
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(coro_factory())).result(  # type: ignore[operator]
            timeout=60)


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


async def _admin() -> asyncpg.Connection:
    try:
        conn: asyncpg.Connection = await asyncpg.connect(ADMIN_URL, timeout=10)
    except Exception as exc:
        raise AssertionError(
            f"PostgreSQL is not reachable at {ADMIN_URL} ({type(exc).__name__}: {exc}); the "
            "relay's PostgreSQL tests need it: start it (`.ci/run` does), point "
            "TILLSYNC_TEST_PG at one, or deselect them with -m 'not postgres'") from None
    return conn


@functools.cache
def _unreachable() -> str | None:
    """Why the server at ADMIN_URL cannot be used, or None (asked once per run)."""

    async def probe() -> str | None:
        try:
            conn = await asyncpg.connect(ADMIN_URL, timeout=10)
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        await conn.close()
        return None

    return _run(lambda: probe())  # type: ignore[return-value]


def require_server() -> None:
    """Fail (CI) or skip (elsewhere) the running test if the server cannot be used."""
    if (why := _unreachable()) is not None:
        unavailable(f"PostgreSQL at {ADMIN_URL}", why,
                    "start it (`.ci/run` does), point TILLSYNC_TEST_PG at one, or deselect "
                    "these tests with -m 'not postgres'")


def create_database() -> str:
    """A new, empty database; returns its URL."""
    require_server()
    name = f"tillsync_test_{uuid.uuid4().hex[:12]}"

    async def create() -> None:
        conn = await _admin()
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    _run(lambda: create())
    return with_database(ADMIN_URL, name)


def drop_database(url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    assert name.startswith("tillsync_test_"), name

    async def drop() -> None:
        conn = await _admin()
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    _run(lambda: drop())


def pg_query(url: str, sql: str, args: tuple[object, ...] | list[object] = ()
             ) -> list[tuple[object, ...]]:
    """Run one statement (``?`` placeholders, as for SQLite) and return its rows."""
    parts = sql.split("?")
    numbered = parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], 1))

    async def run() -> list[tuple[object, ...]]:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            return [tuple(r) for r in await conn.fetch(numbered, *args)]
        finally:
            await conn.close()

    rows = _run(lambda: run())
    assert isinstance(rows, list)
    return rows


# Puts the rejected entries back in their shape before SQLite schema 7 / PostgreSQL
# migration 7 (no sender), rows kept, for tests of upgrades from older versions.
REJECTED_BEFORE_SCHEMA_7 = "ALTER TABLE rejected DROP COLUMN sent_by"
# Drops the tables SQLite schema 8 / PostgreSQL migration 8 brought (the totals of
# refunds, expenses, cash movements and listed items), for tests of upgrades from older
# versions: that migration makes them again and fills every total.
TALLIES_BEFORE_SCHEMA_8 = [f"DROP TABLE {table}" for table in (
    "tally_refunds", "tally_product_refunds", "tally_expenses", "tally_cash_moves",
    "report_items")]


def invoices_before_schema_6(postgres: bool) -> list[str]:
    """Statements that put a relay database's invoice register back in its shape before
    SQLite schema 6 / PostgreSQL migration 6 (UNIQUE (store, client_id), no ``seq``),
    rows kept, for tests of upgrades from older versions.  SQLite drops the register's
    triggers and its index by time with it."""
    if postgres:
        return ["ALTER TABLE invoices DROP CONSTRAINT invoices_store_device_id_seq_key",
                "ALTER TABLE invoices DROP COLUMN seq",
                "ALTER TABLE invoices ADD CONSTRAINT invoices_store_client_id_key "
                "UNIQUE (store, client_id)"]
    return ["CREATE TABLE invoices_5 (store TEXT NOT NULL, series TEXT NOT NULL, "
            "invoice_no INTEGER NOT NULL, client_id TEXT NOT NULL, device_id TEXT NOT NULL, "
            "ticket TEXT, total INTEGER NOT NULL, client_created_at TEXT NOT NULL, "
            "issued_at TEXT NOT NULL, PRIMARY KEY (store, series, invoice_no), "
            "UNIQUE (store, client_id)) WITHOUT ROWID",
            "INSERT INTO invoices_5 SELECT store, series, invoice_no, client_id, device_id, "
            "ticket, total, client_created_at, issued_at FROM invoices",
            "DROP TABLE invoices",
            "ALTER TABLE invoices_5 RENAME TO invoices"]

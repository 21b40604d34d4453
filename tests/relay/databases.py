"""Fresh PostgreSQL databases for relay tests: one per test (or per module), made from
the server at ``TILLSYNC_TEST_PG`` and dropped afterwards.

The server must be reachable: a test on the PostgreSQL backend fails (never skips) when
it is not, so CI cannot go green without proving the PostgreSQL relay.  `.ci/run`
starts the local server first; to leave these tests out by hand: ``-m "not postgres"``.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit, urlunsplit

import asyncpg

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


def create_database() -> str:
    """A new, empty database; returns its URL."""
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

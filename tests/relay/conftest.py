"""Every relay test runs on both backends: SQLite (a file in the relay's data folder)
and PostgreSQL (a fresh database per test, or per module for module-wide relays)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.relay.databases import create_database, drop_database

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def _database(backend: str) -> Iterator[str | None]:
    if backend == "sqlite":
        yield None
        return
    url = create_database()
    try:
        yield url
    finally:
        drop_database(url)


@pytest.fixture(params=BACKENDS)
def relay_db(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """None for SQLite, else the URL of a fresh PostgreSQL database for this test."""
    yield from _database(request.param)


@pytest.fixture(scope="module", params=BACKENDS)
def module_relay_db(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """``relay_db`` for a relay shared by a whole module."""
    yield from _database(request.param)


@pytest.fixture
def pg_db() -> Iterator[str]:
    """A fresh PostgreSQL database, for tests of the PostgreSQL backend alone."""
    url = create_database()
    try:
        yield url
    finally:
        drop_database(url)

"""Every relay test runs on both backends: SQLite (a file in the relay's data folder)
and PostgreSQL (a fresh database per test, or per module for module-wide relays)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.relay.databases import create_database, drop_database
from tests.relay.processes import RelayProcess, Relays

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


@pytest.fixture(scope="module")
def relay(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
          module_relay_db: str | None) -> Iterator[RelayProcess]:
    """One relay process for a whole module, on each backend in turn (a module whose
    tests need their own relay starts it itself)."""
    name = request.module.__name__.rsplit(".", 1)[-1]
    with Relays(tmp_path_factory.mktemp(name), module_relay_db) as relays:
        yield relays.start()

"""Where the relay keeps everything: behind ``RelayStorage`` (see ``base``).

SQLite (``sqlite``) is the default, for one relay process; PostgreSQL (``postgres``)
lets several relay processes share one database.  Numbering and ordering live in the
database (counter rows updated inside the ingest transaction, under the store's lock),
never in process memory.
"""

from pathlib import Path

from tillsync.relay.storage.base import DeviceRow, RelayStorage, RelayTxn, with_retries
from tillsync.relay.storage.sqlite import SQLiteStorage

__all__ = ["DeviceRow", "RelayStorage", "RelayTxn", "SQLiteStorage", "open_storage",
           "with_retries"]


def is_postgres(db: str | None) -> bool:
    return bool(db) and str(db).startswith(("postgresql://", "postgres://"))


async def open_storage(db: str | None, sqlite_path: Path, *, wait: float = 60.0
                       ) -> RelayStorage:
    """PostgreSQL at ``db`` (a postgresql:// URL), or without one the SQLite file."""
    if db is None:
        return await SQLiteStorage.open(sqlite_path)
    if not is_postgres(db):
        raise ValueError(f"--db takes a postgresql://user@host:port/database URL, not {db!r}")
    from tillsync.relay.storage.postgres import PostgresStorage  # asyncpg only when used

    return await PostgresStorage.open(db, wait=wait)

"""Where the relay keeps everything: behind ``RelayStorage`` (see ``base``).

SQLite (``sqlite``) is the default; a PostgreSQL backend comes next.  Numbering and
ordering live in the database (counter rows updated inside the ingest transaction),
never in process memory, so several relay processes can share one database.
"""

from relay.storage.base import DeviceRow, RelayStorage, RelayTxn
from relay.storage.sqlite import SQLiteStorage

__all__ = ["DeviceRow", "RelayStorage", "RelayTxn", "SQLiteStorage"]

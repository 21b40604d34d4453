"""Faults of the relay's storage, named as what they are.

A full disk, a read-only one or a database that cannot be reached is not a bug of the
relay: the relay logs one line saying the cause (no traceback) and tells the device a
code of its own (``storage_full``, ``storage_read_only``, ``storage_unavailable``)
instead of ``internal``.  Whatever failed was rolled back; the device keeps its entries
and tries again later.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
from dataclasses import dataclass


@dataclass(frozen=True)
class StorageFault:
    code: str  # the error code on the wire
    message: str  # for the device's user: what is wrong, what happens next
    cause: str  # for the relay's log: what the storage said


_MESSAGES = {
    "storage_full": "the relay's disk is full; nothing of this link was lost, the till "
                    "keeps its entries and tries again later",
    "storage_read_only": "the relay's storage is read-only; nothing of this link was lost, "
                         "the till keeps its entries and tries again later",
    "storage_unavailable": "the relay cannot reach its database; nothing of this link was "
                           "lost, the till keeps its entries and tries again later",
}
CODES = tuple(_MESSAGES)

_SQLITE = {sqlite3.SQLITE_FULL: "storage_full", sqlite3.SQLITE_READONLY: "storage_read_only",
           sqlite3.SQLITE_IOERR: "storage_unavailable",
           sqlite3.SQLITE_CANTOPEN: "storage_unavailable"}
_ERRNO = {errno.ENOSPC: "storage_full", errno.EDQUOT: "storage_full",
          errno.EROFS: "storage_read_only", errno.EIO: "storage_unavailable"}


def _code_of(exc: BaseException) -> str | None:
    if isinstance(exc, sqlite3.Error):
        primary = getattr(exc, "sqlite_errorcode", -1) & 0xFF
        return _SQLITE.get(primary)
    sqlstate = getattr(exc, "sqlstate", None)  # asyncpg's errors, without importing it
    if isinstance(sqlstate, str):
        if sqlstate == "53100":
            return "storage_full"
        if sqlstate == "25006":
            return "storage_read_only"
        if sqlstate.startswith(("08", "57P", "28")) or sqlstate in ("53300", "3D000"):
            # connection lost or refused, database shutting down, login refused, too many
            # connections, no such database
            return "storage_unavailable"
        if sqlstate == "55000" and "accepting connections" in str(exc):
            return "storage_unavailable"  # ALLOW_CONNECTIONS false
        return None
    if isinstance(exc, OSError):
        if exc.errno in _ERRNO:
            return _ERRNO[exc.errno]
        if isinstance(exc, ConnectionError):
            return "storage_unavailable"
        return None
    if type(exc).__module__.startswith("asyncpg") and "connection" in \
            type(exc).__name__.lower():
        return "storage_unavailable"  # e.g. ConnectionDoesNotExistError
    return None


def storage_fault(exc: BaseException) -> StorageFault | None:
    """The storage fault behind ``exc`` (itself, or what caused it), or None for any
    other failure (a bug: the caller logs its traceback)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        code = _code_of(current)
        if code is not None:
            return StorageFault(code, _MESSAGES[code], f"{type(current).__name__}: {current}")
        current = current.__cause__ or current.__context__
    return None


class _OneLine(logging.Filter):
    """A library's log record of a storage fault: its cause on the line, no traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            fault = storage_fault(record.exc_info[1])
            if fault is not None:
                record.msg = f"{record.getMessage()}: {fault.code}: {fault.cause}"
                record.args = None
                record.exc_info = None
                record.exc_text = None
        return True


def quiet_library_tracebacks() -> None:
    """The database driver's pool logs each failed reconnection with a traceback: a known
    storage fault becomes one line there too."""
    logging.getLogger("asyncpg.pool").addFilter(_OneLine())

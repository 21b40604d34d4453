"""Faults of the disk under a till's store, named as what they are.

SQLite reports a full disk as "database or disk is full", but as often, when it cannot
grow its shared-memory or WAL file, as a bare "disk I/O error": the store is then said
to be damaged when nothing is, and it works again once space is freed.  ``disk_fault``
asks the file system what is wrong (no space left, mounted read-only) before anything
is called damaged.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path
from typing import IO

from tillsync.peer.errors import StoreError, StoreFull, StoreReadOnly

# Less free space than this (bytes) on the store's file system counts as full: SQLite
# needs room for a WAL frame and its shared-memory index, not just for one byte.
LOW_SPACE = 256 * 1024


def _space_left(path: Path) -> tuple[int, bool] | None:
    """(bytes free to this user, read-only?) of the file system holding ``path``."""
    for candidate in (path, *path.parents):
        try:
            stat = os.statvfs(candidate)
        except OSError:
            continue
        return stat.f_bavail * stat.f_frsize, bool(stat.f_flag & os.ST_RDONLY)
    return None


def disk_fault(path: Path, exc: BaseException) -> StoreError | None:
    """A ``StoreFull`` or ``StoreReadOnly`` saying what is wrong with the disk under
    ``path`` if that is what made ``exc``; None if the disk is fine (the caller reports
    ``exc`` as it would have)."""
    code = getattr(exc, "sqlite_errorcode", -1) & 0xFF if isinstance(exc, sqlite3.Error) \
        else -1
    number = exc.errno if isinstance(exc, OSError) else None  # our own files' errors
    space = _space_left(path)
    free, read_only = space if space is not None else (LOW_SPACE, False)
    if code == sqlite3.SQLITE_READONLY or number == errno.EROFS or read_only:
        return StoreReadOnly(f"{path}: the disk holding the store is read-only ({exc}); "
                             "nothing was changed: make it writable and try again")
    if code == sqlite3.SQLITE_FULL or number in (errno.ENOSPC, errno.EDQUOT) or (
            code in (sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN) and free < LOW_SPACE):
        return StoreFull(f"{path}: the disk holding the store is full ({free // 1024} KiB "
                         f"free; {exc}); nothing was lost: free some space and try again")
    return None


def open_lock_file(path: Path) -> IO[str]:
    """Open (or make) a store's lock file; a disk that cannot take it is named."""
    try:
        return open(path, "a+")  # noqa: SIM115 - the caller holds it for the store's life
    except OSError as exc:
        raise disk_fault(path.parent, exc) or StoreError(f"{path}: {exc.strerror}") from None

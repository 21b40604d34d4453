"""The relay's files: expense receipts and product images the tills send (``peer.files``).

Kept in a directory beside the relay's key, ``DATA/files/<store>/``, by content hash,
on either backend: a file is written once and never changes, so it needs none of the
database's transactions, and the database (and its backups, its WAL, its replication)
stays free of megabytes of images.  Relay processes sharing one PostgreSQL database
share their ``DATA`` folder too (``relay serve --workers``), and so the files; relays on
several machines need that folder on shared storage.  What a store's directory is named
is the store id's SHA-256 (a store id is any text).

Limits are relay settings (``relay serve --max-file-mib``, ``--file-types``): a file
over the size or of another type is refused when offered, before any byte is sent,
and nothing of it is stored.

A transfer cut short leaves a partial (``DATA/files/<store>/partial/<hash>``) that the
till's next offer resumes.  If the file then came whole another way (another link, or
another relay process), its partial is of no use: an offer of the file drops it, and so
does the sweep when the relay starts (``sweep_partials``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from tillsync.peer.filelink import FilePolicy
from tillsync.peer.files import FILES_DIR, MEDIA_TYPES, ContentDir

MAX_FILE_MIB = 10.0
FILE_TYPES = ("image/jpeg", "image/png", "image/webp", "application/pdf")
assert set(FILE_TYPES) <= set(MEDIA_TYPES)


def default_policy() -> FilePolicy:
    return FilePolicy(int(MAX_FILE_MIB * 1024 * 1024), FILE_TYPES)


def store_files(data: Path, store: str) -> ContentDir:
    """The directory of one store's files."""
    name = hashlib.sha256(store.encode()).hexdigest()[:32]
    return ContentDir(data / FILES_DIR / name)


def sweep_partials(data: Path) -> list[str]:
    """Drop, in every store's directory, the partials of files held whole; the hashes
    dropped.  Partials of files not held whole stay: a till resumes them.  Blocking (a
    scan of the directories): run it in a thread."""
    root = data / FILES_DIR
    folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    return [sha for folder in folders for sha in ContentDir(folder).drop_stale_partials()]

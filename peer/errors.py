"""Exceptions raised by the till's store.

One root, so an integrator can catch everything tillsync raises on purpose::

    TillsyncError
    ├── StoreError                 the store on disk cannot be used
    │   ├── StoreNotFound          no store at that path (run `peer init`)
    │   ├── StoreExists            `peer init` on a directory that already holds one
    │   ├── StoreLocked            another process is writing the same store
    │   ├── StoreFull              the disk holding the store is full (nothing damaged)
    │   ├── StoreReadOnly          the disk holding the store is read-only
    │   └── StoreCorrupt           the database or a file in it is damaged
    ├── EntryRefused               a peer forwarded entries that do not verify
    └── InvalidInput               the caller asked for something that cannot be stored
        ├── UnknownReference       a product, customer, shift... that does not exist
        ├── DuplicateEntry         a client_id reused for a different entry
        └── Forbidden              this device's role does not allow the change

Schema violations are raised as ``schemas.SchemaViolation`` (a ``ValueError``) by the
language-neutral loader; the store lets them through unchanged.  In every case nothing
that was already stored has changed.
"""

from __future__ import annotations


class TillsyncError(Exception):
    """Root of every error tillsync raises on purpose."""


class StoreError(TillsyncError):
    """The store on disk cannot be used as it is."""


class StoreNotFound(StoreError):
    pass


class StoreExists(StoreError):
    pass


class StoreLocked(StoreError):
    pass


class StoreCorrupt(StoreError):
    pass


class StoreFull(StoreError):
    """The disk holding the store is full: nothing is damaged, and the store works
    again once space is freed."""


class StoreReadOnly(StoreError):
    """The disk holding the store is read-only (or the store's files cannot be
    written)."""


class EntryRefused(TillsyncError):
    """Entries forwarded by a peer break their device's chain or signature; none of the
    batch was stored."""


class InvalidInput(TillsyncError, ValueError):
    """The request is wrong; nothing was stored."""


class UnknownReference(InvalidInput):
    pass


class DuplicateEntry(InvalidInput):
    pass


class Forbidden(InvalidInput):
    """This device's role (in its certificate) does not allow the change: prices and
    settings are for back-office and admin devices (``peer.master.roles``)."""

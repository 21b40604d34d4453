"""Delta reads of master data, computed from the Automerge document itself.

A cursor is the document's heads (the hashes of its latest changes) in hex, joined by
dots.  The records changed since a cursor, and the ids deleted since, come from the
Automerge changes made since those heads (their operations, ``peer.master.changes``):
no second copy of the data and no change log of its own.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

from peer.http.errors import ApiError
from peer.master.changes import Delta, ObjectIndex, Undecodable
from peer.master.document import MasterData, genesis
from peer.master.roles import _read_patch
from peer.store import Till

log = logging.getLogger("tillsync.http")

_GENESIS = genesis().get_heads()


def cursor_of(heads: list[bytes]) -> str:
    return ".".join(sorted(h.hex() for h in heads))


def parse_cursor(text: str) -> list[bytes]:
    try:
        heads = [bytes.fromhex(part) for part in text.split(".")]
    except ValueError:
        heads = []
    if not heads or any(len(h) != 32 for h in heads):
        raise ApiError(400, "bad_cursor", "since is not a cursor this API gave out "
                       "(hex hashes joined by dots)", [{"path": "since", "message":
                                                         "not a cursor"}])
    return heads


DECODE_LIMIT = 1000  # changes since a cursor; past that, one diff costs less


def _index(master: MasterData) -> ObjectIndex:
    index = _INDEXES.get(master)
    if index is None:
        index = _INDEXES[master] = ObjectIndex(master)
    return index


_INDEXES: weakref.WeakKeyDictionary[MasterData, ObjectIndex] = weakref.WeakKeyDictionary()


def changes_all(till: Till, since: list[bytes]) -> dict[str, Delta]:
    """Per collection, ids changed (created, edited) or deleted after ``since``: read
    from the operations of the changes since (``peer.master.changes``), at a cost that
    grows with them; one Automerge diff of the whole document when there are many, or
    when an operation writes to an object the index cannot place."""
    master = till.master
    doc = master._doc  # read-only use of the store's own document
    now = doc.get_heads()
    if set(since) == set(now):
        return {}
    changes = doc.get_changes(since)
    # Automerge treats heads it does not hold as "nothing": every change would come back.
    # Every document here starts from the shared genesis change, so a known cursor never
    # has it among the changes after it.
    if since != _GENESIS and any(c.hash in _GENESIS for c in changes):
        raise ApiError(410, "unknown_cursor", "this till does not know that cursor (from "
                       "another till or a reset store): read the collection in full again",
                       [{"path": "since", "message": "unknown heads"}])
    if len(changes) <= DECODE_LIMIT:
        try:
            found = _index(master).deltas(c.raw_bytes for c in changes)
        except Undecodable as exc:
            log.warning("reading the changes since a cursor failed (%s); diffing", exc)
            found = None
        if found is not None:
            return found
        _INDEXES.pop(master, None)  # built afresh next time, with the objects it missed
    return diff_all(master, since)


def diff_all(master: MasterData, since: list[bytes]) -> dict[str, Delta]:
    """What ``changes_all`` answers, from one Automerge diff of the whole document."""
    doc = master._doc
    out: dict[str, Delta] = {}
    for patch in doc.diff(since, doc.get_heads()):
        path, action, key = _read_patch(patch)
        if not path:
            continue  # the collection maps themselves (the genesis change)
        delta = out.setdefault(path[0], Delta())
        if len(path) == 1:
            (delta.deleted if action == "DeleteMap" else delta.changed).add(key)
        else:
            delta.changed.add(path[1])
    return out


def read(till: Till, collection: str, since: str | None) -> dict[str, Any]:
    """The answer of a delta read: records changed since the cursor (all of them without
    one), the ids deleted since, and the cursor to send next time."""
    heads = till.master.heads()
    if since is None:
        return {"records": till.all(collection), "deleted_ids": [],
                "sync_cursor": cursor_of(heads), "full": True}
    delta = changes_all(till, parse_cursor(since)).get(collection, Delta())
    records: dict[str, Any] = {}
    deleted = set(delta.deleted)
    for record_id in sorted(delta.changed | delta.deleted):
        record = till.get(collection, record_id)
        if record is None:
            deleted.add(record_id)
        else:
            records[record_id] = record
            deleted.discard(record_id)
    return {"records": records, "deleted_ids": sorted(deleted),
            "sync_cursor": cursor_of(heads), "full": False}

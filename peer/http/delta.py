"""Delta reads of master data, computed from the Automerge document itself.

A cursor is the document's heads (the hashes of its latest changes) in hex, joined by
dots.  The records changed since a cursor, and the ids deleted since, come from the
Automerge changes made since those heads (their operations, ``peer.master.changes``):
no second copy of the data and no change log of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tillsync.peer.http.errors import ApiError
from tillsync.peer.master.changes import Delta
from tillsync.peer.master.document import MasterData, genesis
from tillsync.peer.master.roles import _read_patch
from tillsync.peer.store import Till

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


def changes_all(till: Till, since: list[bytes], upto: list[bytes] | None = None
                ) -> dict[str, Delta]:
    """Per collection, ids changed (created, edited) or deleted after ``since`` (and up
    to the heads ``upto``, known here, if given): read from the operations of the changes
    since (``peer.master.changes``), at a cost that grows with them; one Automerge diff of
    the whole document when there are many, or when an operation writes to an object the
    index cannot place."""
    master = till.master
    doc = master._doc  # read-only use of the store's own document
    now = doc.get_heads()
    upto = now if upto is None else upto
    if set(since) == set(upto):
        return {}
    changes = doc.get_changes(since)
    if set(upto) != set(now):  # leave out the changes made after ``upto``
        later = {c.hash for c in doc.get_changes(upto)}
        changes = [c for c in changes if c.hash not in later]
    # Automerge treats heads it does not hold as "nothing": every change would come back.
    # Every document here starts from the shared genesis change, so a known cursor never
    # has it among the changes after it.
    if since != _GENESIS and any(c.hash in _GENESIS for c in changes):
        raise ApiError(410, "unknown_cursor", "this till does not know that cursor (from "
                       "another till or a reset store): read the collection in full again",
                       [{"path": "since", "message": "unknown heads"}])
    found = master.records_changed(changes)
    return found if found is not None else diff_all(master, since, upto)


def diff_all(master: MasterData, since: list[bytes], upto: list[bytes] | None = None
             ) -> dict[str, Delta]:
    """What ``changes_all`` answers, from one Automerge diff of the whole document."""
    doc = master._doc
    out: dict[str, Delta] = {}
    for patch in doc.diff(since, doc.get_heads() if upto is None else upto):
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
        records: Mapping[str, Any] = till.master.view(collection)  # no copy: serialised now
        if any("pin_hash" in r for r in records.values()):
            records = till.all(collection)  # which leaves the PIN hashes out
        return {"records": records, "deleted_ids": [], "sync_cursor": cursor_of(heads),
                "full": True}
    delta = changes_all(till, parse_cursor(since)).get(collection, Delta())
    changed: dict[str, Any] = {}
    deleted = set(delta.deleted)
    for record_id in sorted(delta.changed | delta.deleted):
        record = till.get(collection, record_id)
        if record is None:
            deleted.add(record_id)
        else:
            changed[record_id] = record
            deleted.discard(record_id)
    return {"records": changed, "deleted_ids": sorted(deleted),
            "sync_cursor": cursor_of(heads), "full": False}

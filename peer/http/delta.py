"""Delta reads of master data, computed from the Automerge document itself.

A cursor is the document's heads (the hashes of its latest changes) in hex, joined by
dots.  The records changed since a cursor, and the ids deleted since, come from
Automerge's patches between those heads and the current ones: no second copy of the
data and no change log of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from peer.http.errors import ApiError
from peer.master.document import genesis
from peer.master.roles import _read_patch
from peer.store import Till

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


@dataclass
class Delta:
    changed: set[str] = field(default_factory=set)
    deleted: set[str] = field(default_factory=set)


def changes(till: Till, collection: str, since: list[bytes]) -> Delta:
    """Ids of ``collection`` changed (created, edited) or deleted after ``since``."""
    doc = till.master._doc  # read-only use of the store's own document
    now = doc.get_heads()
    if set(since) == set(now):
        return Delta()
    # Automerge treats heads it does not hold as "nothing": every change would come back.
    # Every document here starts from the shared genesis change, so a known cursor never
    # has it among the changes after it.
    if since != _GENESIS and any(c.hash in _GENESIS for c in doc.get_changes(since)):
        raise ApiError(410, "unknown_cursor", "this till does not know that cursor (from "
                       "another till or a reset store): read the collection in full again",
                       [{"path": "since", "message": "unknown heads"}])
    delta = Delta()
    for patch in doc.diff(since, now):
        path, action, key = _read_patch(patch)
        if path[:1] != [collection]:
            continue
        if len(path) == 1:
            (delta.deleted if action == "DeleteMap" else delta.changed).add(key)
        else:
            delta.changed.add(path[1])
    return delta


def read(till: Till, collection: str, since: str | None) -> dict[str, Any]:
    """The answer of a delta read: records changed since the cursor (all of them without
    one), the ids deleted since, and the cursor to send next time."""
    heads = till.master.heads()
    if since is None:
        return {"records": till.all(collection), "deleted_ids": [],
                "sync_cursor": cursor_of(heads), "full": True}
    delta = changes(till, collection, parse_cursor(since))
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

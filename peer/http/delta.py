"""Delta reads of master data, computed from the Automerge document itself.

A cursor is the document's heads (the hashes of its latest changes) in hex, joined by
dots.  The records changed since a cursor, and the ids deleted since, come from
Automerge's patches between those heads and the current ones: no second copy of the
data.  Changes this till made itself are looked up instead (``peer.master.written``):
Automerge's diff reads the whole document, which is slow at 20,000 products.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tillsync.peer.http.errors import ApiError
from tillsync.peer.master.document import genesis
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


@dataclass
class Delta:
    changed: set[str] = field(default_factory=set)
    deleted: set[str] = field(default_factory=set)


class History:
    """What each recent master-data commit changed, by the heads before and after it
    (kept by the event bus, which reads each commit's patches anyway), so a delta read
    since a recent cursor needs no new diff: Automerge diffs the whole document between
    two heads, ~90 ms for 20,000 products on a small machine."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._steps: dict[frozenset[bytes], tuple[frozenset[bytes], dict[str, Delta]]] = {}

    def add(self, before: list[bytes], after: list[bytes], deltas: dict[str, Delta]) -> None:
        self._steps[frozenset(before)] = (frozenset(after), deltas)
        while len(self._steps) > self.size:
            del self._steps[next(iter(self._steps))]

    def since(self, collection: str, heads: list[bytes], now: list[bytes]) -> Delta | None:
        """The union of the steps from ``heads`` to ``now``, or None if not all are here."""
        at, goal, out = frozenset(heads), frozenset(now), Delta()
        for _ in range(len(self._steps)):
            if at == goal:
                return out
            step = self._steps.get(at)
            if step is None:
                return None
            at, deltas = step
            found = deltas.get(collection)
            if found is not None:
                out.changed |= found.changed
                out.deleted |= found.deleted
        return out if at == goal else None


def changes_all(till: Till, since: list[bytes]) -> dict[str, Delta]:
    """Per collection, ids changed (created, edited) or deleted after ``since``: one
    Automerge diff for them all."""
    doc = till.master._doc  # read-only use of the store's own document
    now = doc.get_heads()
    if set(since) == set(now):
        return {}
    # Automerge treats heads it does not hold as "nothing": every change would come back.
    # Every document here starts from the shared genesis change, so a known cursor never
    # has it among the changes after it.
    changes = doc.get_changes(since)
    if since != _GENESIS and any(c.hash in _GENESIS for c in changes):
        raise ApiError(410, "unknown_cursor", "this till does not know that cursor (from "
                       "another till or a reset store): read the collection in full again",
                       [{"path": "since", "message": "unknown heads"}])
    out: dict[str, Delta] = {}
    written = till.master.written.records(c.hash for c in changes)
    if written is not None:  # only this till's own puts and deletes: no diff needed
        for collection, record_id, deleted in written:
            delta = out.setdefault(collection, Delta())
            (delta.deleted if deleted else delta.changed).add(record_id)
        return out
    for patch in doc.diff(since, now):
        path, action, key = _read_patch(patch)
        if not path:
            continue  # the collection maps themselves (the genesis change)
        delta = out.setdefault(path[0], Delta())
        if len(path) == 1:
            (delta.deleted if action == "DeleteMap" else delta.changed).add(key)
        else:
            delta.changed.add(path[1])
    return out


def read(till: Till, collection: str, since: str | None,
         history: History | None = None) -> dict[str, Any]:
    """The answer of a delta read: records changed since the cursor (all of them without
    one), the ids deleted since, and the cursor to send next time."""
    heads = till.master.heads()
    if since is None:
        return {"records": till.all(collection), "deleted_ids": [],
                "sync_cursor": cursor_of(heads), "full": True}
    cursor = parse_cursor(since)
    delta = history.since(collection, cursor, heads) if history is not None else None
    if delta is None:
        delta = changes_all(till, cursor).get(collection, Delta())
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

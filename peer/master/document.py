"""The store's master-data document, sans I/O.

Layout of the Automerge document::

    ROOT
    ├── products   {id: {name, sku, price, volatile, active, ...}}
    ├── customers  {id: {...}}
    ├── suppliers  {id: {...}}
    ├── cashiers   {id: {name, role, pin_hash, ...}}
    └── settings   {"store": {store_name, currency, tax_rates: {...}, ...}}

The five collection maps come from one *genesis* change made with a fixed actor and
Automerge's zero timestamp, so every device of every store starts from the byte-identical
change: two tills initialised apart merge cleanly instead of fighting over which
``products`` map wins.  Records are keyed by stable ids (UUIDs recommended), never by
array position, and each field is its own Automerge key, so concurrent edits of
different fields of one product both survive and edits of the same field converge.

Known limit: two devices *creating* the same record id concurrently make two maps, and
Automerge keeps one; use fresh UUIDs for new records.

Deleting a record (``delete``) removes its key from the collection map, an ordinary
Automerge change that merges and syncs like any edit.  **A delete wins over concurrent
edits of the record**: an edit of a field made on another device before it knew of the
delete lands inside the removed map and is not seen after the merge.  A ``put`` made
after the delete is known creates a new record under that id.

Every edit returns the Automerge change chunks it made, which the storage layer appends
to disk before the call returns.
"""

from __future__ import annotations

import contextlib
import copy
import zlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import automerge.core as am

from tillsync.peer.errors import InvalidInput
from tillsync.peer.master.pins import hash_pin
from tillsync.schemas import validate_record

if TYPE_CHECKING:
    from tillsync.peer.master.changes import Delta, ObjectIndex

COLLECTIONS = ("cashiers", "customers", "products", "settings", "suppliers")
SETTINGS_ID = "store"
GENESIS_ACTOR = b"tillsync-genesis"  # 16 bytes, shared by every device on purpose

# Filled in on create, so reads return complete records.
_DEFAULTS: dict[str, dict[str, object]] = {
    "products": {"volatile": False, "active": True},
    "customers": {"active": True},
    "suppliers": {"active": True},
    "cashiers": {"active": True},
}


def _nested(record: Mapping[str, object]) -> bool:
    return any(isinstance(v, dict | list) for v in record.values())


def genesis() -> am.Document:
    doc = am.Document(actor_id=GENESIS_ACTOR)
    with doc.transaction() as tx:
        for name in COLLECTIONS:
            tx.put_object(am.ROOT, name, am.ObjType.Map)
    return doc


_GENESIS_HEADS = genesis().get_heads()


def _check_range(value: object, path: str) -> None:
    """Automerge holds 64-bit integers: a bigger one is refused before any change."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            _check_range(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_range(v, f"{path}[{i}]")
    elif isinstance(value, int) and not isinstance(value, bool) \
            and not -2**63 <= value < 2**63:
        raise InvalidInput(f"{path}: {value} is out of range (64-bit integers)")


def _scalar(value: object) -> tuple[Any, object]:
    if isinstance(value, bool):
        return am.ScalarType.Boolean, value
    if isinstance(value, int):
        return am.ScalarType.Int, value
    if isinstance(value, str):
        return am.ScalarType.Str, value
    raise InvalidInput(f"{type(value).__name__} values cannot be stored in master data")


def _write(tx: Any, obj: bytes, key: str | int, value: object, insert: bool = False) -> None:
    if isinstance(value, Mapping):
        child = tx.insert_object(obj, key, am.ObjType.Map) if insert else tx.put_object(
            obj, key, am.ObjType.Map
        )
        for k, v in value.items():
            _write(tx, child, k, v)
    elif isinstance(value, list):
        child = tx.insert_object(obj, key, am.ObjType.List) if insert else tx.put_object(
            obj, key, am.ObjType.List
        )
        for i, v in enumerate(value):
            _write(tx, child, i, v, insert=True)
    else:
        kind, scalar = _scalar(value)
        if insert:
            tx.insert(obj, key, kind, scalar)
        else:
            tx.put(obj, key, kind, scalar)


class MasterData:
    """One store's master-data document, for one device (Automerge actor)."""

    def __init__(self, doc: am.Document, actor: bytes) -> None:
        doc.set_actor(actor)
        self._doc = doc
        self._actor = actor
        self._collections = _collection_ids(doc)
        # Plain-Python copies of whole collections, made on the first ``all`` and kept in
        # step by ``put``: reading 20k products from Automerge costs ~300 ms each time.
        self._cache: dict[str, dict[str, dict[str, Any]]] = {}
        self._index: ObjectIndex | None = None  # see ``records_changed``
        # The last snapshot made or loaded, and the heads it holds: saving 20k products
        # costs ~100 ms, and a relay hands the same snapshot to every new till.
        self._saved: tuple[list[bytes], bytes] | None = None
        # Edits made here (``put``, ``delete``), counted: a LAN link sends these to its
        # peer at once, and only announces the heads of changes that came from elsewhere.
        self.local_edits = 0

    @classmethod
    def new(cls, actor: bytes) -> MasterData:
        return cls(genesis(), actor)

    @classmethod
    def load(cls, data: bytes, actor: bytes) -> MasterData:
        """Load a snapshot followed by any number of change chunks."""
        loaded = cls(am.Document.load(data), actor)
        if is_snapshot(data):
            loaded._saved = (loaded._doc.get_heads(), data)
        return loaded

    # -- reads -------------------------------------------------------------------------

    def _collection(self, collection: str) -> bytes:
        try:
            return self._collections[collection]
        except KeyError:
            raise InvalidInput(
                f"unknown collection {collection!r}; known: {', '.join(COLLECTIONS)}"
            ) from None

    def fields(self, collection: str, record_id: str, names: tuple[str, ...]
               ) -> dict[str, Any] | None:
        """Just these scalar fields of a record, read straight from the document (a few
        microseconds, always current), or None if there is no such record."""
        found = self._doc.get(self._collection(collection), record_id)
        if found is None:
            return None
        out: dict[str, Any] = {}
        for name in names:
            value = self._doc.get(found[1], name)
            if value is None:
                continue
            if value[0] == am.ObjType.Text:  # a string written as Text (automerge-repo)
                out[name] = self._doc.text(value[1])
            elif not isinstance(value[0], am.ObjType):
                out[name] = value[0][1]
        return out

    def get(self, collection: str, record_id: str) -> dict[str, Any] | None:
        """The record as plain Python values, or None."""
        cached = self._cache.get(collection)
        if cached is not None:
            hit = cached.get(record_id)
            return None if hit is None else copy.deepcopy(hit)
        found = self._doc.get(self._collection(collection), record_id)
        if found is None:
            return None
        record = am.extract(self._doc, found[1])
        assert isinstance(record, dict)
        return record

    def all(self, collection: str) -> dict[str, dict[str, Any]]:
        """Every record of a collection, by id."""
        return {k: copy.deepcopy(v) if _nested(v) else dict(v)
                for k, v in self._records(collection).items()}

    def view(self, collection: str) -> Mapping[str, Mapping[str, Any]]:
        """Every record of a collection as kept in memory, without a copy: for
        serialising at once, never to change or keep."""
        return self._records(collection)

    def _records(self, collection: str) -> dict[str, dict[str, Any]]:
        cached = self._cache.get(collection)
        if cached is None:
            records = am.extract(self._doc, self._collection(collection))
            assert isinstance(records, dict)
            cached = self._cache[collection] = {
                k: v for k, v in records.items() if isinstance(v, dict)
            }
        return cached

    def warm(self) -> None:
        """Read every collection into memory now (~0.2-0.3 s at 20,000 products), and
        which record each object is (``records_changed``, ~15 ms), so the first full read
        and the first delta read do not pay for them."""
        from tillsync.peer.master.changes import ObjectIndex, Undecodable

        for name in COLLECTIONS:
            self.view(name)
        if self._index is None:
            with contextlib.suppress(Undecodable):  # then the first delta read builds it
                self._index = ObjectIndex(self._doc, self._collections)

    def records_changed(self, changes: list[Any]) -> dict[str, Delta] | None:
        """Per collection, the records that these changes of this document (from
        ``get_changes``) create, edit or delete, read from their operations
        (``peer.master.changes``), or None when they cannot be read so (too many, or an
        object that cannot be placed): then only a diff tells."""
        from tillsync.peer.master.changes import DECODE_LIMIT, ObjectIndex, Undecodable

        if len(changes) > DECODE_LIMIT:
            return None
        raws = [change.raw_bytes for change in changes]
        for _ in range(2):
            if self._index is None:
                self._index = ObjectIndex(self._doc, self._collections)
            try:
                found = self._index.deltas(raws)
            except Undecodable:
                return None
            if found is not None:
                return found
            self._index = None  # an object made while it was not looking: read again, once
        return None

    def _refresh(self, before: list[bytes]) -> None:
        """Bring the in-memory records up to date after a merge: only those the new
        changes touch, or all of them if that cannot be told."""
        if not self._cache:
            return
        found = self.records_changed(self._doc.get_changes(before))
        if found is None:
            self._cache.clear()
            return
        for collection, delta in found.items():
            cached = self._cache.get(collection)
            if cached is None:
                continue
            for record_id in delta.changed | delta.deleted:
                obj = self._doc.get(self._collections[collection], record_id)
                record = None if obj is None else am.extract(self._doc, obj[1])
                if isinstance(record, dict):
                    cached[record_id] = record
                else:
                    cached.pop(record_id, None)

    def ids(self, collection: str) -> list[str]:
        return list(self._doc.keys(self._collection(collection)))

    def has(self, collection: str, record_id: str, at: Sequence[bytes] | None = None) -> bool:
        """Whether the record exists now, or at the document's heads ``at``."""
        return self._doc.get(self._collection(collection), record_id,
                             None if at is None else list(at)) is not None

    def heads(self) -> list[bytes]:
        return list(self._doc.get_heads())

    def to_py(self) -> dict[str, Any]:
        everything = am.extract(self._doc)
        assert isinstance(everything, dict)
        return everything

    # -- writes ------------------------------------------------------------------------

    def put(self, collection: str, record_id: str, patch: Mapping[str, object]) -> list[bytes]:
        """Create or update a record with the fields in ``patch`` (``None`` removes one).

        The merged record is validated against ``schemas/master/<collection>.json``
        before anything changes.  Returns the change chunks to persist (empty if the
        patch changed nothing).
        """
        coll = self._collection(collection)
        if not isinstance(patch, Mapping):
            raise InvalidInput(f"{collection} body must be a JSON object")
        if collection == "settings" and record_id != SETTINGS_ID:
            raise InvalidInput(f"settings has a single record, id {SETTINGS_ID!r}")
        existing = self.get(collection, record_id)
        merged: dict[str, Any] = dict(_DEFAULTS.get(collection, {})) if existing is None else {}
        merged.update(existing or {})
        for field_name, value in patch.items():
            if value is None:
                merged.pop(field_name, None)
            else:
                merged[field_name] = value
        if collection == "cashiers":
            if "pin_hash" in patch:
                raise InvalidInput("cashiers: give 'pin'; 'pin_hash' is computed, never set")
            if existing is None and "pin" not in patch:
                raise InvalidInput(f"cashiers record {record_id!r}: a new cashier needs a 'pin'")
        validate_record(collection, merged, record_id)
        _check_range(merged, "record")
        if "pin" in merged:
            merged["pin_hash"] = hash_pin(str(merged.pop("pin")))

        before = self._doc.get_heads()
        with self._doc.transaction() as tx:
            if existing is None:
                obj = tx.put_object(coll, record_id, am.ObjType.Map)
            else:
                found = self._doc.get(coll, record_id)
                assert found is not None
                obj = found[1]
            for field_name in existing or {}:
                if field_name not in merged:
                    tx.delete(obj, field_name)
            for field_name, value in merged.items():
                if existing is not None and existing.get(field_name) == value:
                    continue  # untouched fields make no op, so they cannot conflict
                _write(tx, obj, field_name, value)
        if collection in self._cache:
            fresh = self._doc.get(coll, record_id)
            assert fresh is not None
            record = am.extract(self._doc, fresh[1])
            assert isinstance(record, dict)
            self._cache[collection][record_id] = record
        self.local_edits += 1
        return [change.bytes for change in self._doc.get_changes(before)]

    def delete(self, collection: str, record_id: str) -> list[bytes]:
        """Remove a record; returns the change chunks to persist.  Raises
        ``InvalidInput`` for the settings record or an id this document does not hold."""
        coll = self._collection(collection)
        if collection == "settings":
            raise InvalidInput("settings cannot be deleted; change its fields instead")
        if self._doc.get(coll, record_id) is None:
            raise InvalidInput(f"no {collection} record {record_id!r} (deleted already, or "
                               "never created)")
        before = self._doc.get_heads()
        with self._doc.transaction() as tx:
            tx.delete(coll, record_id)
        if collection in self._cache:
            self._cache[collection].pop(record_id, None)
        self.local_edits += 1
        return [change.bytes for change in self._doc.get_changes(before)]

    # -- persistence and merge ---------------------------------------------------------

    def save(self) -> bytes:
        """A compact snapshot of the whole document."""
        heads = self._doc.get_heads()
        if self._saved is not None and self._saved[0] == heads:
            return self._saved[1]
        data: bytes = self._doc.save()
        self._saved = (heads, data)
        return data

    def changes_since(self, heads: list[bytes]) -> list[bytes]:
        return [change.bytes for change in self._doc.get_changes(heads)]

    def sync_message(self, state: am.SyncState) -> bytes | None:
        """The next Automerge sync message for a peer, or None when there is nothing."""
        message = self._doc.generate_sync_message(state)
        return None if message is None else bytes(message.encode())

    def heads_message(self) -> bytes:
        """This document's heads as an Automerge sync message that carries nothing else
        (no need, no have, no changes): see ``heads_only``."""
        heads = sorted(bytes(h) for h in self._doc.get_heads())
        return bytes([_SYNC_MESSAGE[0]]) + _leb(len(heads)) + b"".join(heads) + b"\0\0\0"

    def receive_sync(self, state: am.SyncState, data: bytes) -> list[bytes]:
        """Apply a peer's sync message; returns the change chunks it brought, to persist.

        Raises ``InvalidInput`` if the message cannot be decoded."""
        before = self._doc.get_heads()
        try:
            self._doc.receive_sync_message(state, am.Message.decode(data))
        except Exception as exc:  # the binding raises plain Exception for bad input
            raise InvalidInput(f"bad document sync message: {exc}") from None
        chunks = self.changes_since(before)
        if chunks:
            self._refresh(before)
        return chunks

    def preview_sync(self, data: bytes) -> list[tuple[bytes, list[Any]]]:
        """What a peer's sync message would change, without changing anything: for each
        change it brings, its actor and Automerge's patches of that change alone
        (applied to a fork, with a throwaway sync state).

        Raises ``InvalidInput`` if the message cannot be decoded."""
        forked = self.fork_sync(data)
        if forked is None:
            return []
        fork, changes = forked
        return [(bytes(change.actor_id), list(fork.diff(list(change.deps), [change.hash])))
                for change in changes]

    def fork_sync(self, data: bytes) -> tuple[am.Document, list[Any]] | None:
        """A fork of the document with a peer's sync message applied (a throwaway sync
        state), and the changes it brought; None when the message cannot bring any.
        The live document is not touched, whatever the message holds.

        Raises ``InvalidInput`` if the message cannot be decoded."""
        heads = _message_heads(data)
        if heads is not None and heads <= set(self._doc.get_heads()):
            # The sender holds nothing this document lacks, so the message can bring no
            # new change: the usual case, answered without forking the whole document.
            # (A message that is bad further on is refused when it is received.)
            return None
        fork = self._doc.fork()
        before = fork.get_heads()
        try:
            fork.receive_sync_message(am.SyncState(), am.Message.decode(data))
        except Exception as exc:  # the binding raises plain Exception for bad input
            raise InvalidInput(f"bad document sync message: {exc}") from None
        return fork, list(fork.get_changes(before))

    def is_genesis(self) -> bool:
        """True while the document holds nothing but the shared genesis change."""
        return self._doc.get_heads() == _GENESIS_HEADS

    def apply(self, chunks: bytes) -> list[bytes]:
        """Merge change chunks (or a snapshot) from elsewhere; returns the new chunks.

        A document that holds nothing but the genesis change simply becomes the loaded
        one (one load, no merge), and the bytes it was loaded from are what there is to
        persist: for a new till's first snapshot of 20k products that is one 0.2 s load
        instead of a load, a merge and 20k change chunks to store (~0.6 s)."""
        loaded = am.Document.load(chunks)
        if self.is_genesis():
            # Object ids name the actor that made them: the genesis change's own.
            collections = _collection_ids(loaded)
            if not all(GENESIS_ACTOR in obj for obj in collections.values()):
                raise InvalidInput("the document does not grow from the shared genesis "
                                   "change: not a tillsync document")
            loaded.set_actor(self._actor)
            self._doc, self._collections = loaded, collections
            self._cache.clear()
            self._index = None  # of the document it was
            if is_snapshot(chunks):
                self._saved = (loaded.get_heads(), chunks)
            return [chunks] if not self.is_genesis() else []
        before = self._doc.get_heads()
        self._doc.merge(loaded)
        self._refresh(before)
        return self.changes_since(before)


def _collection_ids(doc: am.Document) -> dict[str, bytes]:
    """The object id of each collection map (the genesis change made them all)."""
    ids: dict[str, bytes] = {}
    for name in COLLECTIONS:
        found = doc.get(am.ROOT, name)
        if found is None or found[0] != am.ObjType.Map:
            raise InvalidInput(f"document has no '{name}' map: not a tillsync document")
        ids[name] = found[1]
    return ids


class _Truncated(Exception):
    """Bytes that end, or go on, where the format says they cannot."""


def _uleb(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while shift < 64:
        if pos >= len(data):
            raise _Truncated
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos
    raise _Truncated


def _skip_hashes(data: bytes, pos: int) -> int:
    count, pos = _uleb(data, pos)
    pos += 32 * count
    if pos > len(data):
        raise _Truncated
    return pos


_SYNC_MESSAGE = (0x42, 0x43)  # the first byte of an Automerge sync message


def _leb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def heads_only(data: bytes) -> bool:
    """Whether a sync message states the sender's heads and nothing else (what
    ``MasterData.heads_message`` makes).  Automerge reads an empty 'have' as "tell me
    nothing but what I need", so a receiver that holds those heads already must not
    apply it to its sync state (it would hold back its own changes until the next full
    message); one that lacks them applies it, and its answer asks for them."""
    heads = _message_heads(data)
    return heads is not None and data.endswith(b"\0\0\0") and \
        len(data) == 1 + len(_leb(len(heads))) + 32 * len(heads) + 3


def message_heads(data: bytes) -> set[bytes] | None:
    """The sender's heads, read from an Automerge sync message (None if it does not
    parse)."""
    return _message_heads(data)


def _message_heads(data: bytes) -> set[bytes] | None:
    """The sender's heads, read from the start of an Automerge sync message (type byte
    0x42 or 0x43, then a LEB128 count of 32-byte hashes); None if it does not parse."""
    if len(data) < 2 or data[0] not in _SYNC_MESSAGE:
        return None
    try:
        count, pos = _uleb(data, 1)
    except _Truncated:
        return None
    end = pos + 32 * count
    if count > 10_000 or end > len(data):
        return None
    return {data[i:i + 32] for i in range(pos, end, 32)}


_CHUNK_MAGIC = b"\x85\x6f\x4a\x83"
_DOCUMENT, _CHANGE, _COMPRESSED_CHANGE = 0, 1, 2  # chunk types


def is_snapshot(data: bytes) -> bool:
    """True if ``data`` is exactly one whole-document chunk (what ``save`` makes):
    magic, checksum, type 0, LEB128 length, and nothing after that many bytes."""
    if len(data) < 10 or data[:4] != _CHUNK_MAGIC or data[8] != _DOCUMENT:
        return False
    try:
        length, start = _uleb(data, 9)
    except _Truncated:
        return False
    return start + length == len(data)


def _change_authors(blob: bytes) -> list[bytes]:
    """The actor of every change chunk in ``blob`` (one or several chunks back to back:
    magic, checksum, type, LEB128 length, then the change: its dependencies, its actor)."""
    authors = []
    pos = 0
    while pos < len(blob):
        if blob[pos:pos + 4] != _CHUNK_MAGIC or pos + 9 > len(blob):
            raise _Truncated
        kind = blob[pos + 8]
        length, start = _uleb(blob, pos + 9)
        pos = start + length
        if pos > len(blob) or kind not in (_CHANGE, _COMPRESSED_CHANGE):
            raise _Truncated
        body = blob[start:pos]
        if kind == _COMPRESSED_CHANGE:
            try:
                body = zlib.decompress(body, -15)
            except zlib.error:
                raise _Truncated from None
        at = _skip_hashes(body, 0)
        size, at = _uleb(body, at)
        if size == 0 or at + size > len(body):
            raise _Truncated
        authors.append(body[at:at + size])
    return authors


def sync_message_authors(data: bytes) -> set[bytes] | None:
    """The actor ids of the changes an Automerge sync message brings, read from its bytes
    without applying it (type byte 0x42 or 0x43; heads, need and have, then the changes,
    each element one or more change chunks); None if it does not parse so, e.g. when it
    carries a whole document: then only applying it to a fork tells."""
    if len(data) < 2 or data[0] not in _SYNC_MESSAGE:
        return None
    try:
        pos = _skip_hashes(data, 1)  # heads
        pos = _skip_hashes(data, pos)  # need
        count, pos = _uleb(data, pos)  # have: last_sync hashes and a bloom filter each
        for _ in range(count):
            pos = _skip_hashes(data, pos)
            size, pos = _uleb(data, pos)
            pos += size
        count, pos = _uleb(data, pos)
        authors: set[bytes] = set()
        for _ in range(count):
            size, pos = _uleb(data, pos)
            if pos + size > len(data):
                return None
            authors.update(_change_authors(data[pos:pos + size]))
            pos += size
    except _Truncated:
        return None
    return authors

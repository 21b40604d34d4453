"""Which master-data records some Automerge changes touch, read from the changes' own
operations: the cost grows with the changes, not with the document.

Automerge's ``diff`` between two heads walks the whole document (~45-90 ms at 20,000
products, whatever the change).  A change, though, lists its operations column by
column (the binary change format of the Automerge spec): for each, the object it
writes to (actor, counter), its key and its action.  ``ObjectIndex`` knows which
record each object is (read once from the document, then kept up to date from the
changes it decodes), so a change's records are a lookup per operation.

It over-approximates, which is safe for its readers (a delta read and the ``master``
event send the record as it is now, or its id as deleted): an operation that lost to a
concurrent one still names its record.  An operation on an object it cannot place
(created and removed before the index was built, a nested object of a record other than
the settings) makes ``ObjectIndex.deltas`` answer None: ``MasterData.records_changed``
then reads the document's objects again, once, and failing that its caller diffs.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import automerge.core as am

from tillsync.peer.master.document import _Truncated, _uleb

T = TypeVar("T")
ObjKey = tuple[bytes, int]  # (actor, counter): the id of the operation that made it
_MAGIC = b"\x85\x6f\x4a\x83"
_CHANGE, _COMPRESSED = 1, 2
# Operation columns of a change: (column id << 4) | type; bit 3 says "deflated".
_OBJ_ACTOR, _OBJ_CTR, _KEY_STR, _ACTION = 0x01, 0x02, 0x15, 0x42
DECODE_LIMIT = 1000  # changes read at once; past that, one diff of the document costs less
_MAKES = frozenset({0, 2, 4, 6})  # makeMap, makeList, makeText, makeTable
_DELETE = 3


class Undecodable(Exception):
    """Bytes that are not a change as this module reads them."""


@dataclass
class Delta:
    """Ids of one collection's records changed (created, edited) or deleted."""

    changed: set[str] = field(default_factory=set)
    deleted: set[str] = field(default_factory=set)


def _sleb(data: bytes, pos: int) -> tuple[int, int]:
    start = pos
    value, pos = _uleb(data, pos)
    bits = 7 * (pos - start)
    return (value - (1 << bits) if value & (1 << (bits - 1)) else value), pos


def _bytes(data: bytes, pos: int) -> tuple[bytes, int]:
    size, pos = _uleb(data, pos)
    if pos + size > len(data):
        raise Undecodable("a field runs past its end")
    return data[pos:pos + size], pos + size


def _string(data: bytes, pos: int) -> tuple[str, int]:
    raw, pos = _bytes(data, pos)
    return raw.decode(), pos


def _rle(data: bytes, count: int | None, read: Callable[[bytes, int], tuple[T, int]]
         ) -> list[T | None]:
    """A run-length encoded column: runs of one value, literal runs, and null runs;
    padded with nulls to ``count`` values (a column may stop at its last value)."""
    out: list[T | None] = []
    pos = 0
    while pos < len(data):
        run, pos = _sleb(data, pos)
        if run > 0:
            value, pos = read(data, pos)
            out.extend([value] * run)
        elif run < 0:
            for _ in range(-run):
                value, pos = read(data, pos)
                out.append(value)
        else:
            nulls, pos = _uleb(data, pos)
            out.extend([None] * nulls)
    if count is None:
        return out
    if len(out) > count:
        raise Undecodable("a column holds more values than the change has operations")
    return out + [None] * (count - len(out))


@dataclass
class Op:
    obj: ObjKey | None  # None: the document's root
    key: str | None  # None: a list position
    action: int
    id: ObjKey


def operations(raw: bytes) -> list[Op]:
    """The operations of one change chunk (``Change.raw_bytes``)."""
    try:
        return _operations(raw)
    except (_Truncated, zlib.error, UnicodeDecodeError) as exc:
        raise Undecodable(str(exc) or type(exc).__name__) from None


def _operations(raw: bytes) -> list[Op]:
    if raw[:4] != _MAGIC or len(raw) < 10 or raw[8] not in (_CHANGE, _COMPRESSED):
        raise Undecodable("not a change chunk")
    length, start = _uleb(raw, 9)
    body = raw[start:start + length]
    if raw[8] == _COMPRESSED:
        body = zlib.decompress(body, -15)
    deps, pos = _uleb(body, 0)
    pos += 32 * deps
    actor, pos = _bytes(body, pos)
    _, pos = _uleb(body, pos)  # seq
    start_op, pos = _uleb(body, pos)
    _, pos = _sleb(body, pos)  # time
    _, pos = _bytes(body, pos)  # message
    others, pos = _uleb(body, pos)
    actors = [actor]
    for _ in range(others):
        other, pos = _bytes(body, pos)
        actors.append(other)
    columns, pos = _uleb(body, pos)
    specs = []
    for _ in range(columns):
        spec, pos = _uleb(body, pos)
        size, pos = _uleb(body, pos)
        specs.append((spec, size))
    data: dict[int, bytes] = {}
    for spec, size in specs:
        chunk = body[pos:pos + size]
        pos += size
        if spec & 0x08:
            chunk = zlib.decompress(chunk, -15)
        data[spec & ~0x08] = chunk
    if pos > len(body):
        raise Undecodable("the columns run past the change")
    action = _rle(data.get(_ACTION, b""), None, _uleb)  # every operation has one
    count = len(action)
    obj_actor = _rle(data.get(_OBJ_ACTOR, b""), count, _uleb)
    obj_ctr = _rle(data.get(_OBJ_CTR, b""), count, _uleb)
    keys = _rle(data.get(_KEY_STR, b""), count, _string)
    out = []
    for i in range(count):
        a, c, act = obj_actor[i], obj_ctr[i], action[i]
        if act is None or (a is None) != (c is None) or (a is not None and a >= len(actors)):
            raise Undecodable("an operation without an action or with a bad object")
        obj = None if a is None or c is None else (actors[a], c)
        out.append(Op(obj, keys[i], act, (actor, start_op + i)))
    return out


def _obj_key(obj_id: bytes) -> ObjKey:
    """(actor, counter) of an object id as the binding hands it out: a tag byte, the
    actor (length-prefixed), the actor's index in this document, the counter."""
    try:
        actor, pos = _bytes(obj_id, 1)
        _, pos = _uleb(obj_id, pos)
        counter, _ = _uleb(obj_id, pos)
    except _Truncated:
        raise Undecodable(f"an object id of another shape: {obj_id.hex()}") from None
    return actor, counter


class ObjectIndex:
    """Which record (collection, id) each object of a document is."""

    def __init__(self, doc: Any, collections: Mapping[str, bytes]) -> None:
        self.collections: dict[ObjKey, str] = {}
        self.records: dict[ObjKey, tuple[str, str]] = {}
        for name, coll in collections.items():
            self.collections[_obj_key(coll)] = name
            keys, values = doc.keys(coll), doc.values(coll)
            if len(keys) != len(values):
                raise Undecodable("keys and values of a collection do not pair up")
            for record_id, (value, obj) in zip(keys, values, strict=True):
                if isinstance(value, am.ObjType):
                    self._walk(doc, obj, (name, record_id), nested=name == "settings")

    def _walk(self, doc: Any, obj: bytes, record: tuple[str, str], nested: bool) -> None:
        self.records[_obj_key(obj)] = record
        if nested:
            for value, child in doc.values(obj):
                if isinstance(value, am.ObjType):
                    self._walk(doc, child, record, nested)

    def deltas(self, raws: Iterable[bytes]) -> dict[str, Delta] | None:
        """Per collection, the records these changes (in causal order) touch; None if an
        operation writes to an object this index cannot place."""
        out: dict[str, Delta] = {}
        for raw in raws:
            for op in operations(raw):
                if op.obj is None:
                    continue  # the collection maps themselves (the genesis change)
                collection = self.collections.get(op.obj)
                if collection is not None:
                    if op.key is None:
                        return None
                    delta = out.setdefault(collection, Delta())
                    if op.action in _MAKES:
                        self.records[op.id] = (collection, op.key)
                    (delta.deleted if op.action == _DELETE else delta.changed).add(op.key)
                    continue
                record = self.records.get(op.obj)
                if record is None:
                    return None
                if op.action in _MAKES:
                    self.records[op.id] = record
                out.setdefault(record[0], Delta()).changed.add(record[1])
        return out

"""Log entries and their canonical, hashable form.

An entry is signed over the SHA-256 of its canonical bytes, the msgpack encoding of::

    [1, client_id, device_id, seq, prev, kind, client_created_at, ticket, body]

where ``1`` is the format version, ``prev`` the 32-byte hash of the device's previous
entry (32 zero bytes for ``seq`` 1), ``ticket`` the provisional ticket number of a sale
or nil, and ``body`` a msgpack map whose keys are sorted at every level.  Floats are not
allowed anywhere: money is integer minor units and quantities are decimal strings.
Because ``body`` is stored already canonical, the hash is recomputed from stored bytes
without decoding it (see ``Entry.canonical``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import msgpack

from tillsync.peer.errors import InvalidInput
from tillsync.peer.identity import DeviceKey, verify_signature

FORMAT_VERSION = 1
GENESIS_PREV = bytes(32)
_ARRAY_OF_9 = b"\x99"  # msgpack fixarray header, 9 elements


def _canonical(value: object, path: str) -> object:
    if isinstance(value, Mapping):
        out: dict[str, object] = {}
        for key in sorted(value):
            if not isinstance(key, str):
                raise TypeError(f"{path}: keys must be strings, got {key!r}")
            out[key] = _canonical(value[key], f"{path}.{key}")
        return out
    if isinstance(value, list | tuple):
        return [_canonical(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, float):
        raise TypeError(f"{path}: floats are not allowed (money is integer minor units)")
    if isinstance(value, int) and not isinstance(value, bool) \
            and not -2**63 <= value < 2**64:
        raise TypeError(f"{path}: {value} is out of range (64-bit integers)")
    if value is None or isinstance(value, str | int | bool | bytes):
        return value
    raise TypeError(f"{path}: {type(value).__name__} cannot be stored")


_PLAIN = frozenset((str, int, bool, bytes, type(None)))


def _sorted(value: object) -> object:
    """``_canonical`` for the common case (plain dicts, lists, scalars), without building
    paths; anything else raises and the slow path says where."""
    if type(value) is dict:
        return {k: _sorted(value[k]) for k in sorted(value)}
    if type(value) is list:
        return [_sorted(v) for v in value]
    if type(value) in _PLAIN:
        return value
    raise TypeError


def canonical_body(body: Mapping[str, object]) -> bytes:
    """The canonical msgpack bytes of a map (keys sorted at every level, no floats):
    entry bodies, and the relay's receipts."""
    try:
        plain = _sorted(body)
        if type(body) is not dict:
            raise TypeError
        packed: bytes = msgpack.packb(plain, use_bin_type=True)
    except (TypeError, OverflowError):  # a float, a huge integer, an odd type: name it
        packed = msgpack.packb(_canonical(body, "body"), use_bin_type=True)
    return packed


def entry_bytes(body: Mapping[str, object]) -> bytes:
    """``canonical_body`` of a body a caller gives to be recorded: what it cannot hold
    is ``InvalidInput`` naming the offending path (nothing is stored)."""
    try:
        return canonical_body(body)
    except TypeError as exc:
        raise InvalidInput(str(exc)) from None


@dataclass(frozen=True)
class Entry:
    """One signed entry of a device's log, as stored and as sent."""

    client_id: str
    device_id: str
    seq: int
    prev: bytes
    kind: str
    client_created_at: str
    ticket: str | None
    body_bytes: bytes
    sig: bytes

    def __reduce__(self) -> tuple[type[Entry], tuple[Any, ...]]:
        # Pickled as its nine fields (the relay ships batches to a worker process): about
        # half the cost of the default, which pickles the instance's __dict__.
        return Entry, (self.client_id, self.device_id, self.seq, self.prev, self.kind,
                       self.client_created_at, self.ticket, self.body_bytes, self.sig)

    @cached_property
    def body(self) -> dict[str, Any]:
        decoded: dict[str, Any] = msgpack.unpackb(self.body_bytes, raw=False)
        return decoded

    def canonical(self) -> bytes:
        return canonical_bytes(
            self.client_id,
            self.device_id,
            self.seq,
            self.prev,
            self.kind,
            self.client_created_at,
            self.ticket,
            self.body_bytes,
        )

    @cached_property
    def hash(self) -> bytes:
        return hashlib.sha256(self.canonical()).digest()

    def signature_valid(self, public_key: bytes) -> bool:
        return verify_signature(public_key, self.sig, self.hash)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-ready form, with the field names of `schemas/protocol/README.md`."""
        out: dict[str, Any] = {
            "client_id": self.client_id,
            "device_id": self.device_id,
            "seq": self.seq,
            "prev": self.prev.hex(),
            "kind": self.kind,
            "client_created_at": self.client_created_at,
            "body": self.body,
            "hash": self.hash.hex(),
            "sig": self.sig.hex(),
        }
        if self.ticket is not None:
            out["ticket"] = self.ticket
        return out


def canonical_bytes(
    client_id: str,
    device_id: str,
    seq: int,
    prev: bytes,
    kind: str,
    client_created_at: str,
    ticket: str | None,
    body_bytes: bytes,
) -> bytes:
    # The 8 head fields packed as one array (header byte 0x98, then each field as msgpack
    # packs it alone), its header replaced by the 9-element one; body_bytes follow as is.
    head: bytes = msgpack.packb(
        (FORMAT_VERSION, client_id, device_id, seq, prev, kind, client_created_at, ticket),
        use_bin_type=True)
    return _ARRAY_OF_9 + head[1:] + body_bytes


def seal(key: DeviceKey, *, body: Mapping[str, object], **fields: Any) -> Entry:
    """Build and sign the next entry.  Pure: the caller supplies ids and the time."""
    return seal_bytes(key, body_bytes=canonical_body(body), **fields)


def seal_bytes(
    key: DeviceKey,
    *,
    client_id: str,
    device_id: str,
    seq: int,
    prev: bytes,
    kind: str,
    client_created_at: str,
    ticket: str | None,
    body_bytes: bytes,
) -> Entry:
    """``seal`` for a body already in canonical bytes (see ``canonical_body``)."""
    fields = (client_id, device_id, seq, prev, kind, client_created_at, ticket, body_bytes)
    digest = hashlib.sha256(canonical_bytes(*fields)).digest()
    entry = Entry(*fields, key.sign(digest))
    entry.__dict__["hash"] = digest  # cached_property slot: no need to hash twice
    return entry

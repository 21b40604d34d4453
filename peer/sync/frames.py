"""Wire frames: one msgpack map per websocket binary message, checked on the way in.

Every frame is a map with ``t`` (its type) and the fields of that type (see
``schemas/protocol/messages.json``).  ``decode`` never raises anything but
``ProtocolError``, whose ``code`` is what goes back to the other side in an ``error``
frame; internal details are never echoed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import msgpack

from tillsync.schemas.limits import INTEGER_MAX

PROTOCOL_VERSION = 5
MAX_FRAME = 4 * 1024 * 1024  # bytes; a batch of 500 sales is ~250 KB
# The websocket layer accepts up to twice that, so a frame a little too big gets a
# 'too_large' error frame and the link goes on; a far bigger one is cut off (close 1009).
TRANSPORT_MAX = 2 * MAX_FRAME
MAX_BATCH = 1000  # entries or receipts in one frame
MAX_CHUNK = 256 * 1024  # bytes of a file in one file_chunk frame


class ProtocolError(Exception):
    """The other side sent something this protocol does not allow.

    ``code`` is stable and machine-readable (``malformed``, ``unknown_type``,
    ``too_large``, ``bad_field``, ``unexpected``, ``version``, ``auth_failed``,
    ``unknown_device``, ``revoked``, ``bad_code``, ``bad_document``, ``forbidden``,
    ``internal``; on LAN links also ``bad_certificate``, ``wrong_store``, ``self``,
    ``bad_entry``, ``bad_receipts``, ``revoked``);
    ``fatal`` says whether the link must close (see ``schemas/protocol/README.md``)."""

    def __init__(self, code: str, message: str, *, fatal: bool = True) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.fatal = fatal


def _is_bytes(n: int | None = None) -> Callable[[object], bool]:
    return lambda v: isinstance(v, bytes) and (n is None or len(v) == n)


def _is_str(v: object) -> bool:
    return isinstance(v, str) and 0 < len(v) <= 200


def _is_int(v: object) -> bool:
    """A msgpack int from 0 to ``INTEGER_MAX`` (2^53 - 1), tillsync's one range."""
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= INTEGER_MAX


def _is_list(v: object) -> bool:
    return isinstance(v, list) and len(v) <= MAX_BATCH


def _is_heads(v: object) -> bool:
    """Device id -> seq: every seq in tillsync's one range, like every seq on the wire
    (a seq past it could be neither stored nor compared with what a store holds)."""
    return isinstance(v, dict) and all(_is_str(k) and _is_int(s) for k, s in v.items())


def _is_devices(v: object) -> bool:
    """An array of device ids (as ``hello``'s ``device``)."""
    return isinstance(v, list) and len(v) <= MAX_BATCH and all(_is_str(d) for d in v)


def _is_chunk(v: object) -> bool:
    return isinstance(v, bytes) and 0 < len(v) <= MAX_CHUNK


def _is_cert(v: object) -> bool:
    return isinstance(v, bytes) and 0 < len(v) <= 2048


def _is_certs(v: object) -> bool:
    """An array of certificates or revocations (the same signed [body, sig] shape)."""
    return isinstance(v, list) and len(v) <= MAX_BATCH and all(_is_cert(c) for c in v)


# type -> {field: check}; fields not listed are refused.
MESSAGES: dict[str, dict[str, Callable[[object], bool]]] = {
    "hello": {"v": _is_int, "store": _is_str, "device": _is_str, "nonce": _is_bytes(32),
              "receipts_after": _is_int, "doc_empty": lambda v: isinstance(v, bool)},
    "enroll": {"v": _is_int, "code": _is_str, "device": _is_str, "name": _is_str,
               "public_key": _is_bytes(32)},
    "enrolled": {"store": _is_str, "device": _is_str, "relay_key": _is_bytes(32),
                 "cert": _is_cert},
    "challenge": {"nonce": _is_bytes(32), "relay_key": _is_bytes(32), "sig": _is_bytes(64)},
    "auth": {"sig": _is_bytes(64)},
    "welcome": {"heads": _is_heads, "receipts_head": _is_int, "cert": _is_cert,
                "revoked": _is_certs},
    # till to till, on the shop LAN (see schemas/protocol/README.md, "LAN links")
    "peer_hello": {"v": _is_int, "store": _is_str, "cert": _is_cert, "nonce": _is_bytes(32)},
    "peer_challenge": {"cert": _is_cert, "nonce": _is_bytes(32), "sig": _is_bytes(64)},
    "have": {"heads": _is_heads, "receipts_head": _is_int},
    "certs": {"certs": _is_certs},
    "revoked": {"revoked": _is_certs},
    "entries": {"entries": _is_list},
    "ingested": {"heads": _is_heads, "count": _is_int, "receipts_head": _is_int},
    "receipts": {"receipts": _is_list, "head": _is_int},
    "doc": {"m": _is_bytes()},
    "edit": {"m": _is_bytes()},  # till to till: a 'doc' sent for the sender's own edit
    "links": {"devices": _is_devices},
    "doc_snapshot": {"data": _is_bytes()},
    # files, on relay and LAN links alike (see schemas/protocol/README.md, "Files")
    "file_offer": {"sha256": _is_bytes(32), "size": _is_int, "type": _is_str},
    "file_want": {"sha256": _is_bytes(32), "offset": _is_int},
    "file_chunk": {"sha256": _is_bytes(32), "offset": _is_int, "data": _is_chunk},
    "file_have": {"sha256": _is_bytes(32)},
    "file_refused": {"sha256": _is_bytes(32), "code": _is_str,
                     "message": lambda v: isinstance(v, str)},
    "error": {"code": _is_str, "message": lambda v: isinstance(v, str),
              "fatal": lambda v: isinstance(v, bool)},
}


def encode(t: str, **fields: Any) -> bytes:
    packed: bytes = msgpack.packb({"t": t, **fields}, use_bin_type=True)
    return packed


def receipts_frame(packed: Sequence[bytes], head: int) -> bytes:
    """``encode("receipts", receipts=..., head=head)`` from receipts already packed one
    by one (the relay packs each once, to hash it, and stores and sends those bytes)."""
    packer = msgpack.Packer(use_bin_type=True)
    return b"".join((packer.pack_map_header(3), packer.pack("t"), packer.pack("receipts"),
                     packer.pack("receipts"), packer.pack_array_header(len(packed)), *packed,
                     packer.pack("head"), packer.pack(head)))


def decode(data: bytes | str, *, max_size: int = MAX_FRAME) -> dict[str, Any]:
    """Parse and check one frame; raise ``ProtocolError`` naming what is wrong."""
    if isinstance(data, str):
        raise ProtocolError("malformed", "text frames are not used; send binary msgpack")
    if len(data) > max_size:
        raise ProtocolError("too_large", f"frame of {len(data)} bytes exceeds {max_size}; "
                            f"send smaller batches", fatal=False)
    try:
        message = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception:  # msgpack raises several unrelated types for bad input
        raise ProtocolError("malformed", "frame is not valid msgpack") from None
    if not isinstance(message, dict) or not isinstance(message.get("t"), str):
        raise ProtocolError("malformed", "frame must be a map with a string field 't'")
    t = message["t"]
    spec = MESSAGES.get(t)
    if spec is None:
        raise ProtocolError("unknown_type", f"unknown message type {t[:40]!r}")
    for name, value in message.items():
        if name == "t":
            continue
        check = spec.get(name)
        if check is None:
            raise ProtocolError("bad_field", f"{t}: unexpected field {name[:40]!r}")
        if not check(value):
            raise ProtocolError("bad_field", f"{t}: field {name!r} has the wrong type or size")
    missing = [name for name in spec if name not in message]
    if missing:
        raise ProtocolError("bad_field", f"{t}: missing field(s) {', '.join(missing)}")
    return message


def entry_to_wire(entry: Any) -> list[Any]:
    """An ``Entry`` as the 9-element array of the wire format."""
    return [entry.client_id, entry.device_id, entry.seq, entry.prev, entry.kind,
            entry.client_created_at, entry.ticket, entry.body_bytes, entry.sig]


# The longest string each text field of an entry's envelope may hold on the wire (the
# ticket and the others; device ids as in ``hello``).  Within them, a client_id that is
# not a lowercase UUID v4 is the relay's decision (``bad_client_id``), not the frame's.
ENVELOPE_MAX = {"client_id": 64, "device_id": 200, "kind": 64, "client_created_at": 64,
                "ticket": 32}
_CID, _DEV, _KIND, _AT, _TICKET = ENVELOPE_MAX.values()


def entry_from_wire(item: object) -> Any:
    from tillsync.peer.log import Entry

    if not (isinstance(item, list) and len(item) == 9):
        raise ProtocolError("bad_field", "entries: each entry is an array of 9 fields",
                            fatal=False)
    cid, dev, seq, prev, kind, at, ticket, body, sig = item
    if not (isinstance(cid, str) and isinstance(dev, str) and _is_int(seq)
            and isinstance(prev, bytes) and len(prev) == 32 and isinstance(kind, str)
            and isinstance(at, str) and (ticket is None or isinstance(ticket, str))
            and isinstance(body, bytes) and isinstance(sig, bytes) and len(sig) == 64):
        raise ProtocolError("bad_field", "entries: an entry has a field of the wrong type",
                            fatal=False)
    if len(cid) > _CID or len(dev) > _DEV or len(kind) > _KIND or len(at) > _AT or (
            ticket is not None and len(ticket) > _TICKET):
        for name, value in zip(ENVELOPE_MAX, (cid, dev, kind, at, ticket), strict=True):
            if value is not None and len(value) > ENVELOPE_MAX[name]:
                raise ProtocolError("bad_field", f"entries: {name} of {len(value)} characters;"
                                    f" at most {ENVELOPE_MAX[name]}", fatal=False)
    return Entry(cid, dev, seq, prev, kind, at, ticket, body, sig)


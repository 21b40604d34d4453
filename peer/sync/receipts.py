"""Receipts: the relay's signed answer for every entry, in its own append-only stream.

Each receipt is a msgpack map (field names of ``schemas/protocol/README.md``:
``client_id``, ``status``, ``server_seq``, ``series``, ``invoice_no``, ``server_id``,
``total``, ``warnings``, ``error``) plus ``device_id``, ``seq``, ``kind``, ``ticket`` of
the entry it answers and ``prev``, the hash of the receipt before it in the store's
stream. The hash of a receipt is SHA-256 of its canonical bytes without ``sig``. Like a
device's log, the stream is a hash chain, so the relay signs only the last receipt of
each batch (its ``sig``): that signature vouches for every receipt before it. A later
receipt for the same ``client_id`` supersedes an earlier one (``waiting`` then
``accepted``); an acceptance is final (a rejection after it is about a conflicting copy
sent under the same client_id).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

import msgpack

from tillsync.peer.identity import DeviceKey, verify_signature
from tillsync.peer.log import canonical_body

GENESIS = bytes(32)


_FLAT = frozenset((str, int, bytes, bool, type(None)))


def receipt_bytes(receipt: dict[str, Any]) -> bytes:
    """The canonical bytes of a receipt without its ``sig``: what its hash is taken of.
    Keys sorted, so for a receipt with no ``sig`` they are also its msgpack encoding."""
    unsigned = {k: receipt[k] for k in sorted(receipt) if k != "sig"}
    for value in unsigned.values():
        if type(value) not in _FLAT and (type(value) is not list or value):
            # Something nested (warnings, waiting_for) or odd: the general rule.
            return canonical_body(unsigned)
    # Flat, keys sorted: already canonical (the common accepted receipt)
    packed: bytes = msgpack.packb(unsigned, use_bin_type=True)
    return packed


def receipt_hash(receipt: dict[str, Any]) -> bytes:
    return hashlib.sha256(receipt_bytes(receipt)).digest()


def seal_packed(
    key: DeviceKey, receipts: Sequence[dict[str, Any]], first_seq: int, prev: bytes
) -> tuple[bytes, list[bytes]]:
    """``seal_receipts``, also returning each receipt's msgpack bytes, to store and send
    without packing it again: the bytes that were hashed, but for the signed last one."""
    packed = []
    for offset, receipt in enumerate(receipts):
        receipt["server_seq"] = first_seq + offset
        receipt["prev"] = prev
        packed.append(receipt_bytes(receipt))
        prev = hashlib.sha256(packed[-1]).digest()
    if receipts:
        receipts[-1]["sig"] = key.sign(prev)
        packed[-1] = msgpack.packb(receipts[-1], use_bin_type=True)
    return prev, packed


def seal_receipts(
    key: DeviceKey, receipts: Sequence[dict[str, Any]], first_seq: int, prev: bytes
) -> bytes:
    """Number, chain and sign a batch in place; returns the new stream head hash."""
    return seal_packed(key, receipts, first_seq, prev)[0]


def verify_receipts(
    relay_key: bytes, receipts: Iterable[dict[str, Any]], after_seq: int, after_hash: bytes
) -> tuple[int, bytes, str | None]:
    """Check a run of receipts continuing the stream at ``after_seq``.

    Returns the last position vouched for by a valid signature, its hash, and the first
    problem (or None).  Receipts after the last signature are not vouched for yet."""
    seq, prev = after_seq, after_hash
    good_seq, good_hash = after_seq, after_hash
    for receipt in receipts:
        if not isinstance(receipt, dict) or receipt.get("server_seq") != seq + 1:
            got = receipt.get("server_seq") if isinstance(receipt, dict) else receipt
            return good_seq, good_hash, f"expected receipt {seq + 1}, got {got!r:.40}"
        if receipt.get("prev") != prev:
            return good_seq, good_hash, f"receipt {seq + 1} does not chain to the one before"
        try:
            seq, prev = seq + 1, receipt_hash(receipt)
        except (TypeError, ValueError) as exc:  # floats, odd keys: not a receipt we sign
            return good_seq, good_hash, f"receipt {seq + 1} is malformed: {exc}"
        if "sig" in receipt:
            sig = receipt["sig"]
            if not isinstance(sig, bytes) or not verify_signature(relay_key, sig, prev):
                return good_seq, good_hash, f"receipt {seq}: the relay's signature does not verify"
            good_seq, good_hash = seq, prev
    return good_seq, good_hash, None


RELAY_BEHIND = "relay_behind"  # error code: the device holds more of the stream than the relay


def relay_behind(held: int, relay_head: int) -> str:
    """The one line both ends say when a device holds receipts up to ``held`` and the
    relay's stream ends at ``relay_head`` before it: the relay has lost receipts."""
    return (f"the relay's receipt stream ends at {relay_head} but this device holds receipts "
            f"up to {held}: the relay has lost data; its operator must restore the relay's "
            "backup (the device keeps every receipt it holds and pushes nothing until then)")

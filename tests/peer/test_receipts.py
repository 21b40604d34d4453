"""Receipts: the relay's hash-chained stream, one signature per batch head.

``seal_receipts`` numbers, chains and signs a batch as the relay does; ``verify_receipts``
is what a till runs on every ``receipts`` frame before storing anything.  The last test
drives the relay's real receipt pump and checks that what it sends can be verified the
way ``peer.client`` verifies it.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
from pathlib import Path
from typing import Any

import automerge.core as am
import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tillsync.peer.identity import DeviceKey, verify_signature
from tillsync.peer.sync.engine import RelayLink
from tillsync.peer.sync.frames import decode, encode, receipts_frame
from tillsync.peer.sync.receipts import (
    GENESIS,
    receipt_hash,
    seal_packed,
    seal_receipts,
    verify_receipts,
)

RELAY_KEY, OTHER_KEY = DeviceKey.generate(), DeviceKey.generate()
RELAY = RELAY_KEY.public_bytes
DEVICE, STORE = "3f1c8a52-6d1e-4b7a-9a43-0c2f5e9b7d10", "store-1"


def receipt(n: int) -> dict[str, Any]:
    """An unsealed receipt as ingest makes it (an accepted sale, with a warning)."""
    return {"client_id": f"00000000-0000-4000-8000-{n:012d}", "device_id": DEVICE, "seq": n,
            "kind": "sale", "ticket": f"T01-{n:06d}", "status": "accepted", "series": "INV",
            "invoice_no": n, "total": 320 * n, "shift_server_id": "shift-1",
            "warnings": [{"code": "low_stock", "product_id": "bread", "qty": "4",
                          "reorder_level": "5"}]}


def batch(first: int, size: int, prev: bytes, key: DeviceKey = RELAY_KEY
          ) -> tuple[list[dict[str, Any]], bytes]:
    receipts = [receipt(first + i) for i in range(size)]
    return receipts, seal_receipts(key, receipts, first, prev)


def over_the_wire(receipts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Through msgpack and back, as stored by the relay and sent in a frame."""
    out: list[dict[str, Any]] = msgpack.unpackb(
        msgpack.packb(receipts, use_bin_type=True), raw=False)
    return out


# -- sealing --------------------------------------------------------------------------


def documented_hash(receipt: dict[str, Any]) -> bytes:
    """SHA-256 of the map without ``sig``, msgpack with keys sorted at every level."""
    def sorted_map(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: sorted_map(value[k]) for k in sorted(value)}
        if isinstance(value, list):
            return [sorted_map(v) for v in value]
        return value

    unsigned = sorted_map({k: v for k, v in receipt.items() if k != "sig"})
    return hashlib.sha256(msgpack.packb(unsigned, use_bin_type=True)).digest()


def test_seal_numbers_chains_and_signs_only_the_head() -> None:
    receipts, head = batch(1, 4, GENESIS)
    assert [r["server_seq"] for r in receipts] == [1, 2, 3, 4]
    assert receipts[0]["prev"] == GENESIS == bytes(32)
    for before, after in zip(receipts, receipts[1:], strict=False):
        assert after["prev"] == receipt_hash(before)
    assert ["sig" in r for r in receipts] == [False, False, False, True]
    assert head == receipt_hash(receipts[-1])


def test_the_hash_and_signature_are_as_documented() -> None:
    """SHA-256 of the map without ``sig``, msgpack with keys sorted at every level;
    the relay signs that 32-byte hash itself."""
    receipts, head = batch(1, 2, GENESIS)
    last = receipts[-1]
    digest = documented_hash(last)
    assert digest == head
    assert verify_signature(RELAY, last["sig"], digest)
    # Field order does not matter: a map built in another order hashes the same.
    assert receipt_hash(dict(reversed(list(last.items())))) == head


def test_the_bytes_sealing_hands_back_are_the_receipts_and_make_the_same_frame() -> None:
    """The relay stores and sends the bytes ``seal_packed`` made while hashing: each
    decodes to its receipt (the signed last one with its ``sig``), and a frame joined
    from them says what ``encode`` of the receipts says."""
    flat = [{k: v for k, v in receipt(n).items() if k != "warnings"} | {"warnings": []}
            for n in (1, 2)]  # the common case, hashed without canonical_body
    receipts = flat + [receipt(n) for n in (3, 4, 5)]
    head, packed = seal_packed(RELAY_KEY, receipts, 1, GENESIS)
    assert [msgpack.unpackb(p, raw=False) for p in packed] == receipts
    assert "sig" in msgpack.unpackb(packed[-1], raw=False)
    assert [hashlib.sha256(p).digest() for p in packed[:-1]] == \
        [r["prev"] for r in receipts[1:]]
    assert head == documented_hash(receipts[-1])
    assert decode(receipts_frame(packed, 77)) == decode(encode("receipts", receipts=receipts,
                                                               head=77))
    assert decode(receipts_frame([], 0)) == {"t": "receipts", "receipts": [], "head": 0}


def test_sealing_an_empty_batch_changes_nothing() -> None:
    assert seal_receipts(RELAY_KEY, [], 8, b"h" * 32) == b"h" * 32


# -- verifying ------------------------------------------------------------------------


def test_a_valid_batch_verifies() -> None:
    receipts, head = batch(1, 5, GENESIS)
    assert verify_receipts(RELAY, receipts, 0, GENESIS) == (5, head, None)


def test_a_batch_verifies_after_a_msgpack_round_trip() -> None:
    receipts, head = batch(1, 5, GENESIS)
    assert verify_receipts(RELAY, over_the_wire(receipts), 0, GENESIS) == (5, head, None)


def test_an_empty_run_verifies_to_where_it_started() -> None:
    assert verify_receipts(RELAY, [], 7, b"h" * 32) == (7, b"h" * 32, None)


def test_verification_continues_across_batches() -> None:
    first, head1 = batch(1, 3, GENESIS)
    second, head2 = batch(4, 4, head1)
    third, head3 = batch(8, 1, head2)
    assert verify_receipts(RELAY, first + second + third, 0, GENESIS) == (8, head3, None)
    # ... and from a position stored earlier, as a till does on its next round.
    assert verify_receipts(RELAY, second + third, 3, head1) == (8, head3, None)
    assert verify_receipts(RELAY, third, 7, head2) == (8, head3, None)


def test_a_run_must_start_right_after_the_stored_position() -> None:
    first, head1 = batch(1, 3, GENESIS)
    second, _ = batch(4, 2, head1)
    _, _, problem = verify_receipts(RELAY, second, 0, GENESIS)
    assert problem == "expected receipt 1, got 4"
    # The right position with the wrong hash: a different stream.
    assert verify_receipts(RELAY, second, 3, b"x" * 32)[2] == (
        "receipt 4 does not chain to the one before")


@pytest.mark.parametrize("index", [0, 2, 4])
@pytest.mark.parametrize(("field", "value"), [
    ("status", "rejected"), ("invoice_no", 99), ("total", 1), ("client_id", "other"),
    ("device_id", "other"), ("ticket", "T09-000001"), ("warnings", []),
    ("waiting_for", ["x"]), ("prev", bytes(32)),
])
def test_a_tampered_field_is_detected(index: int, field: str, value: object) -> None:
    receipts, _ = batch(1, 5, GENESIS)
    if receipts[index].get(field) == value:
        value = b"\x01" * 32
    receipts[index][field] = value
    good_seq, good_hash, problem = verify_receipts(RELAY, receipts, 0, GENESIS)
    assert problem is not None
    assert (good_seq, good_hash) == (0, GENESIS)  # nothing of the batch is vouched for


def test_a_tampered_earlier_batch_leaves_nothing_after_it_vouched_for() -> None:
    first, head1 = batch(1, 3, GENESIS)
    second, _ = batch(4, 3, head1)
    second[-1]["total"] += 1
    assert verify_receipts(RELAY, first + second, 0, GENESIS) == (
        3, head1, "receipt 6: the relay's signature does not verify")


def test_a_reordered_receipt_is_detected() -> None:
    receipts, _ = batch(1, 5, GENESIS)
    receipts[1], receipts[2] = receipts[2], receipts[1]
    assert verify_receipts(RELAY, receipts, 0, GENESIS) == (
        0, GENESIS, "expected receipt 2, got 3")


def test_a_reordered_receipt_renumbered_to_fit_is_detected() -> None:
    receipts, _ = batch(1, 5, GENESIS)
    receipts[1], receipts[2] = receipts[2], receipts[1]
    receipts[1]["server_seq"], receipts[2]["server_seq"] = 2, 3
    assert verify_receipts(RELAY, receipts, 0, GENESIS)[:2] == (0, GENESIS)
    assert verify_receipts(RELAY, receipts, 0, GENESIS)[2] is not None


@pytest.mark.parametrize("missing", [0, 2, 3])
def test_a_missing_receipt_is_detected(missing: int) -> None:
    receipts, _ = batch(1, 5, GENESIS)
    del receipts[missing]
    good_seq, good_hash, problem = verify_receipts(RELAY, receipts, 0, GENESIS)
    assert problem is not None and (good_seq, good_hash) == (0, GENESIS)


def test_a_missing_signed_head_leaves_its_batch_unvouched() -> None:
    receipts, _ = batch(1, 5, GENESIS)
    # Not an error (the head may come in the next frame), but nothing is vouched for.
    assert verify_receipts(RELAY, receipts[:-1], 0, GENESIS) == (0, GENESIS, None)


def test_a_repeated_receipt_is_detected() -> None:
    receipts, _ = batch(1, 3, GENESIS)
    _, _, problem = verify_receipts(RELAY, [receipts[0], *receipts], 0, GENESIS)
    assert problem == "expected receipt 2, got 1"


def test_a_bad_signature_is_detected() -> None:
    receipts, _ = batch(1, 3, GENESIS)
    sig = bytearray(receipts[-1]["sig"])
    sig[10] ^= 1
    receipts[-1]["sig"] = bytes(sig)
    assert verify_receipts(RELAY, receipts, 0, GENESIS) == (
        0, GENESIS, "receipt 3: the relay's signature does not verify")


@pytest.mark.parametrize("sig", [b"", bytes(64), b"\xff" * 64, bytes(63)])
def test_a_meaningless_signature_is_detected(sig: bytes) -> None:
    receipts, _ = batch(1, 3, GENESIS)
    receipts[-1]["sig"] = sig
    assert verify_receipts(RELAY, receipts, 0, GENESIS)[2] == (
        "receipt 3: the relay's signature does not verify")


def test_a_forged_head_signed_by_another_key_is_detected() -> None:
    genuine, _ = batch(1, 3, GENESIS)
    forged = copy.deepcopy(genuine)
    for r in forged:
        r.pop("sig", None)
    forged[0]["total"] = 1  # rewrite history and re-chain and sign it with another key
    seal_receipts(OTHER_KEY, forged, 1, GENESIS)
    assert verify_receipts(OTHER_KEY.public_bytes, forged, 0, GENESIS)[2] is None
    assert verify_receipts(RELAY, forged, 0, GENESIS) == (
        0, GENESIS, "receipt 3: the relay's signature does not verify")


def test_a_genuine_signature_moved_onto_a_forged_head_is_detected() -> None:
    receipts, _ = batch(1, 3, GENESIS)
    forged = copy.deepcopy(receipts)
    forged[2]["total"] = 1
    assert verify_receipts(RELAY, forged, 0, GENESIS)[2] is not None


def test_receipts_after_the_last_signed_one_are_not_vouched_for() -> None:
    first, head1 = batch(1, 3, GENESIS)
    second, _ = batch(4, 4, head1)
    del second[-1]["sig"]
    assert verify_receipts(RELAY, first + second, 0, GENESIS) == (3, head1, None)
    # Not even when they are only the first part of a batch whose head comes later.
    third, head3 = batch(4, 4, head1)
    assert verify_receipts(RELAY, first + third[:2], 0, GENESIS) == (3, head1, None)
    assert verify_receipts(RELAY, third, 3, head1) == (7, head3, None)


def test_an_unsigned_tail_that_does_not_chain_is_still_a_problem() -> None:
    first, head1 = batch(1, 3, GENESIS)
    second, _ = batch(4, 3, head1)
    del second[-1]["sig"]
    second[1]["prev"] = bytes(32)
    good_seq, good_hash, problem = verify_receipts(RELAY, first + second, 0, GENESIS)
    assert (good_seq, good_hash) == (3, head1)
    assert problem == "receipt 5 does not chain to the one before"


def test_an_extra_signature_inside_a_batch_is_checked_too() -> None:
    receipts, head = batch(1, 4, GENESIS)
    receipts[1]["sig"] = bytes(64)  # changes the hash chain: receipt 3 no longer chains
    assert verify_receipts(RELAY, receipts, 0, GENESIS)[2] is not None


# -- malformed receipts from the wire -------------------------------------------------
# A receipts frame is only checked to be a list of maps: whatever is inside reaches
# verify_receipts, which promises "the first problem (or None)".


@pytest.mark.parametrize(("name", "change"), [
    ("sig is a str", {"sig": "x" * 64}),
    ("sig is nil", {"sig": None}),
    ("a float", {"total": 1.5}),
    ("a bin key", {b"total": 1}),
    ("a nested float", {"warnings": [{"code": "x", "qty": 0.5}]}),
])
def test_a_malformed_receipt_is_a_problem_not_an_exception(name: str,
                                                           change: dict[Any, Any]) -> None:
    receipts, _ = batch(1, 3, GENESIS)
    receipts[-1].update(change)
    good_seq, good_hash, problem = verify_receipts(RELAY, receipts, 0, GENESIS)
    assert problem is not None, name
    assert (good_seq, good_hash) == (0, GENESIS)


# -- the relay's receipt pump, as a till verifies it ----------------------------------


class _Socket:
    """Collects what the relay sends; enough of a websocket for ``Relay._pump``."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def send(self, data: bytes) -> None:
        self.sent.append(data)


async def test_every_receipt_the_relay_pushes_can_be_verified_in_turn(tmp_path: Path) -> None:
    """Batches of 3 and of RECEIPTS_PER_FRAME + 10 receipts, as two ingests write them;
    the till checks each ``receipts`` frame like ``peer.client._round`` does: what a frame
    leaves unvouched (it ended inside a signed batch) is verified with the next frame."""
    from tillsync.relay.server import RECEIPTS_PER_FRAME, Relay
    from tillsync.relay.storage import SQLiteStorage

    relay = Relay(await SQLiteStorage.open(tmp_path / "relay.db"), RELAY_KEY)
    try:
        total = 0
        for size in (3, RECEIPTS_PER_FRAME + 10):
            async with relay.storage.transaction() as txn:
                seq, prev = await txn.stream_head(STORE)
                receipts = [receipt(seq + 1 + i) for i in range(size)]
                head, packed = seal_packed(RELAY_KEY, receipts, seq + 1, prev)
                await txn.insert_receipts(STORE, receipts, packed)
                await txn.set_stream_head(STORE, seq + size, head)
            total += size
        hub = await relay.hubs.get(STORE)
        socket = _Socket()
        link = RelayLink(nonce=bytes(32))
        wake = asyncio.Event()
        wake.set()  # as the handler does once the device is authenticated
        pump = asyncio.create_task(relay._pump(socket, link, hub,  # type: ignore[arg-type]
                                               {"sync": am.SyncState()}, asyncio.Lock(),
                                               wake, 0))
        for _ in range(100):  # until the pump waits for news
            await asyncio.sleep(0.01)
            if any(decode(f)["t"] == "doc" for f in socket.sent):
                break
        pump.cancel()
        frames = [decode(f) for f in socket.sent if decode(f)["t"] == "receipts"]
    finally:
        await relay.close()

    assert sum(len(f["receipts"]) for f in frames) == total
    seq, head = 0, GENESIS  # what the till holds, verified
    unvouched: list[dict[str, object]] = []
    for frame in frames:
        run = unvouched + frame["receipts"]
        good_seq, good_head, problem = verify_receipts(RELAY, run, seq, head)
        assert problem is None, f"frame starting at {frame['receipts'][0]['server_seq']}: " \
                                f"{problem} (the till has verified up to {seq})"
        unvouched = [r for r in run if r["server_seq"] > good_seq]
        seq, head = good_seq, good_head
    assert seq == total and not unvouched


_leaf = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=8)
         | st.binary(max_size=8))
_values = st.recursive(_leaf, lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)


@given(st.dictionaries(st.sampled_from(["client_id", "status", "server_seq", "warnings",
                                        "total", "sig", "prev", "error", "a", "Z", "é"]),
                       _values, max_size=8))
def test_the_hash_of_any_receipt_shape_is_the_documented_one(receipt: dict[str, Any]) -> None:
    """Flat receipts take a shortcut (keys sorted, no nested map to sort): the same bytes."""
    assert receipt_hash(receipt) == documented_hash(receipt)

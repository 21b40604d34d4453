"""The log entry format: canonical bytes, hash chain, signatures (sans I/O)."""

from __future__ import annotations

import dataclasses
import pickle
import uuid

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tillsync.peer.identity import DeviceKey
from tillsync.peer.log import GENESIS_PREV, Entry, canonical_body, seal, verify_chain

KEY = DeviceKey.generate()
DEVICE = "d5f0c7a2-0000-4000-8000-000000000001"


def chain(bodies: list[dict[str, object]], key: DeviceKey = KEY) -> list[Entry]:
    entries: list[Entry] = []
    prev = GENESIS_PREV
    for seq, body in enumerate(bodies, start=1):
        entry = seal(key, client_id=str(uuid.uuid4()), device_id=DEVICE, seq=seq, prev=prev,
                     kind="stock_move", client_created_at="2026-11-22T10:00:00.000Z",
                     ticket=None, body=body)
        entries.append(entry)
        prev = entry.hash
    return entries


BODIES = [{"product_id": f"p{i}", "direction": "in", "qty": i + 1, "reason": "delivery"}
          for i in range(5)]


def test_canonical_body_sorts_keys_and_refuses_floats() -> None:
    assert canonical_body({"b": 1, "a": {"z": 1, "y": 2}}) == canonical_body(
        {"a": {"y": 2, "z": 1}, "b": 1})
    with pytest.raises(TypeError, match=r"body\.lines\[0\]\.qty: floats are not allowed"):
        canonical_body({"lines": [{"qty": 0.75}]})


def test_a_valid_chain_verifies_with_every_or_only_the_head_signature() -> None:
    entries = chain(BODIES)
    assert verify_chain(entries, KEY.public_bytes) is None
    assert verify_chain(entries, KEY.public_bytes, every_signature=False) is None
    # continuing a chain mid-way
    assert verify_chain(entries[2:], KEY.public_bytes, after_seq=2,
                        after_hash=entries[1].hash) is None


def test_an_altered_body_is_the_first_break() -> None:
    entries = chain(BODIES)
    forged = dataclasses.replace(entries[2], body_bytes=canonical_body(
        {**BODIES[2], "qty": 999}))
    broken = verify_chain([*entries[:2], forged, *entries[3:]], KEY.public_bytes)
    assert broken is not None and broken.seq == 3 and "signature" in broken.reason
    # head-only mode still catches it, at the link after the altered entry
    broken = verify_chain([*entries[:2], forged, *entries[3:]], KEY.public_bytes,
                          every_signature=False)
    assert broken is not None and broken.seq == 4 and "prev" in broken.reason


def test_gap_repeat_and_foreign_key_are_breaks() -> None:
    entries = chain(BODIES)
    gap = verify_chain([entries[0], entries[2]], KEY.public_bytes)
    assert gap is not None and gap.seq == 3 and "expected seq 2" in gap.reason
    repeat = verify_chain([entries[0], entries[0]], KEY.public_bytes)
    assert repeat is not None and repeat.seq == 1
    other = DeviceKey.generate()
    wrong_key = verify_chain(entries, other.public_bytes)
    assert wrong_key is not None and wrong_key.seq == 1
    assert verify_chain(entries, other.public_bytes, every_signature=False) is not None


def test_device_key_repr_never_shows_the_private_key() -> None:
    assert "PRIVATE" not in repr(KEY) and KEY.public_bytes.hex() in repr(KEY)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(st.text(max_size=8), json_values, max_size=6))
def test_body_round_trips_and_any_change_changes_the_hash(body: dict[str, object]) -> None:
    [entry] = chain([body])
    assert entry.body == body
    assert entry.signature_valid(KEY.public_bytes)
    changed = dataclasses.replace(entry, body_bytes=canonical_body({**body, "extra": 1}))
    assert changed.hash != entry.hash and not changed.signature_valid(KEY.public_bytes)


@given(client_id=st.text(max_size=40), device_id=st.text(max_size=40),
       seq=st.integers(1, 2**64 - 1), prev=st.binary(min_size=32, max_size=32),
       kind=st.text(max_size=20), at=st.text(max_size=30),
       ticket=st.none() | st.text(max_size=20),
       body=st.dictionaries(st.text(max_size=8), json_values, max_size=6))
def test_canonical_bytes_are_the_documented_nine_element_array(
        client_id: str, device_id: str, seq: int, prev: bytes, kind: str, at: str,
        ticket: str | None, body: dict[str, object]) -> None:
    """What a client in another language computes from peer/log/entry.py's docstring:
    msgpack of [1, client_id, device_id, seq, prev, kind, client_created_at, ticket,
    body], the body's keys sorted at every level."""
    entry = Entry(client_id, device_id, seq, prev, kind, at, ticket, canonical_body(body),
                  b"")
    documented = msgpack.packb([1, client_id, device_id, seq, prev, kind, at, ticket,
                                msgpack.unpackb(canonical_body(body), raw=False)],
                               use_bin_type=True)
    assert entry.canonical() == documented


def test_an_entry_pickles_as_its_fields() -> None:
    """The relay ships batches to a worker process by pickle."""
    entry = chain(BODIES[:1])[0]
    copy = pickle.loads(pickle.dumps(entry))
    assert copy == entry and copy.hash == entry.hash and copy.body == entry.body

"""Bad input to a running relay process, over raw websockets.

Before the handshake every broken frame is answered with an ``error`` frame (stable
code, a message) and the connection is closed; after it, bad entries are answered with
``rejected`` receipts and kept, and nothing already decided changes.  The relay keeps
serving other devices all along.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from typing import Any

import msgpack
import pytest

from tests.doubles import sale
from tests.relay.processes import (
    Chain,
    RawSession,
    RelayProcess,
    hello,
    invoices,
    query,
    quick_code,
    raw_exchange,
    relay_receipts,
    snapshot,
)
from tillsync.peer.client import enroll
from tillsync.peer.identity import DeviceKey
from tillsync.peer.sync.engine import Ingested, RemoteError
from tillsync.peer.sync.frames import MAX_FRAME, PROTOCOL_VERSION, TRANSPORT_MAX

PRODUCT_SALE = (("bread", 2, 320),)



def new_store() -> str:
    return f"store-{uuid.uuid4().hex[:8]}"


async def enrolled(relay: RelayProcess, store: str) -> Chain:
    key, device = DeviceKey.generate(), str(uuid.uuid4())
    done = await enroll(relay.url, quick_code(relay, store, "Till X"), "Till X", key, device)
    assert (done.store, done.device) == (store, device)
    return Chain(key, device)


async def selling(relay: RelayProcess) -> tuple[str, Chain, RawSession]:
    """A store whose one device has opened a shift and made one sale (invoice 1)."""
    store = new_store()
    chain = await enrolled(relay, store)
    shift = chain.next("shift_open", {"cashier_id": "ann", "opening_cash": 0})
    chain.next("sale", sale(*PRODUCT_SALE, shift_client_id=shift.client_id))
    session = await RawSession.open(relay.url, store, chain.device_id, chain.key)
    assert (await session.push(chain.entries)).heads == {chain.device_id: 2}
    first = await session.receipts_until(2)
    assert [(r["status"], r.get("invoice_no")) for r in first] == [("accepted", None),
                                                                  ("accepted", 1)]
    return store, chain, session


async def still_serving(relay: RelayProcess) -> None:
    """Another device of another store can still connect and get a sale numbered."""
    store, _chain, session = await selling(relay)
    await session.close()
    assert [r[1] for r in invoices(relay, store)] == [1]


def frame(**fields: Any) -> bytes:
    packed: bytes = msgpack.packb(fields, use_bin_type=True)
    return packed


# -- before the handshake -----------------------------------------------------------


async def _unknown_code(relay: RelayProcess) -> list[bytes | str]:
    return [frame(t="enroll", v=PROTOCOL_VERSION, code="NOPE0-NOPE0-NOPE0-NOPE0",
                  device=str(uuid.uuid4()), name="Till Z", public_key=os.urandom(32))]


async def _used_code(relay: RelayProcess) -> list[bytes | str]:
    code = quick_code(relay, new_store(), "Till Y")
    await enroll(relay.url, code, "Till Y", DeviceKey.generate(), str(uuid.uuid4()))
    return [frame(t="enroll", v=PROTOCOL_VERSION, code=code, device=str(uuid.uuid4()),
                  name="Till Y2", public_key=os.urandom(32))]


async def _bad_auth(relay: RelayProcess) -> list[bytes | str]:
    store = new_store()
    chain = await enrolled(relay, store)
    return [hello(store, chain.device_id), frame(t="auth", sig=os.urandom(64))]


async def _auth_by_other_key(relay: RelayProcess) -> list[bytes | str]:
    store = new_store()
    chain = await enrolled(relay, store)
    return [hello(store, chain.device_id),
            frame(t="auth", sig=DeviceKey.generate().sign(b"device" + bytes(32)))]


async def _unknown_device(relay: RelayProcess) -> list[bytes | str]:
    store = new_store()
    await enrolled(relay, store)
    return [hello(store, str(uuid.uuid4()))]


def _fixed(*frames: bytes | str) -> Callable[[RelayProcess], Any]:
    async def build(relay: RelayProcess) -> list[bytes | str]:
        return list(frames)
    return build


PRE_HANDSHAKE = {
    "malformed msgpack": (_fixed(b"\xc1\x93\xff"), "malformed"),
    "not a map": (_fixed(msgpack.packb([1, 2, 3])), "malformed"),
    "text frame": (_fixed('{"t": "hello"}'), "malformed"),
    "unknown message type": (_fixed(frame(t="gossip", x=1)), "unknown_type"),
    "missing field": (_fixed(frame(t="hello", v=PROTOCOL_VERSION)), "bad_field"),
    "wrong protocol version": (_fixed(frame(t="enroll", v=99, code="X", device="d", name="n",
                                            public_key=bytes(32))), "version"),
    "entries before the handshake": (_fixed(frame(t="entries", entries=[])), "unexpected"),
    "auth before hello": (_fixed(frame(t="auth", sig=bytes(64))), "unexpected"),
    "unknown device": (_unknown_device, "unknown_device"),
    "wrong signature in auth": (_bad_auth, "auth_failed"),
    "auth signed by another key": (_auth_by_other_key, "auth_failed"),
    "enroll with an unknown code": (_unknown_code, "bad_code"),
    "enroll with a used code": (_used_code, "bad_code"),
}


@pytest.mark.parametrize("case", list(PRE_HANDSHAKE))
async def test_broken_frames_get_an_error_and_the_link_closes(
        relay: RelayProcess, case: str) -> None:
    build, code = PRE_HANDSHAKE[case]
    received, closed = await raw_exchange(relay.url, await build(relay))
    errors = [m for m in received if m.get("t") == "error"]
    assert len(errors) == 1, f"{case}: expected one error frame, got {received} " \
                             f"(closed: {closed})"
    error = errors[0]
    assert (error["code"], error["fatal"]) == (code, True), error
    assert isinstance(error["message"], str) and len(error["message"]) > 10, error
    assert received[-1] is error  # nothing after a fatal error...
    assert closed, f"{case}: the relay kept the connection open after a fatal error"
    assert relay.alive
    await still_serving(relay)


async def test_a_frame_a_little_too_large_gets_a_non_fatal_error(relay: RelayProcess) -> None:
    """Over MAX_FRAME but within the transport's limit: 'too_large', and the link goes on
    (here: the handshake that follows works)."""
    store = new_store()
    chain = await enrolled(relay, store)
    big = frame(t="entries", entries=[], pad=bytes(MAX_FRAME))
    assert MAX_FRAME < len(big) < TRANSPORT_MAX
    received, closed = await raw_exchange(relay.url, [big, hello(store, chain.device_id)])
    assert [m.get("t") for m in received] == ["error", "challenge"], received
    assert (received[0]["code"], received[0]["fatal"]) == ("too_large", False)
    assert str(MAX_FRAME) in received[0]["message"]
    assert not closed
    await still_serving(relay)


async def test_a_frame_far_too_large_is_cut_off_by_the_transport(relay: RelayProcess) -> None:
    store = new_store()
    huge = frame(t="gossip", pad=bytes(TRANSPORT_MAX))
    received, closed = await raw_exchange(relay.url, [huge])
    assert closed
    assert all(m.get("t") == "error" for m in received), received
    assert (await enroll(relay.url, quick_code(relay, store, "Till W"), "Till W",
                         DeviceKey.generate(), str(uuid.uuid4()))).store == store
    await still_serving(relay)


async def test_enrolling_an_already_enrolled_device_id_is_refused_cleanly(
        relay: RelayProcess) -> None:
    """A fresh, valid code, but a device id the store already has."""
    store = new_store()
    chain = await enrolled(relay, store)
    code = quick_code(relay, store, "Till Again")
    received, closed = await raw_exchange(relay.url, [frame(
        t="enroll", v=PROTOCOL_VERSION, code=code, device=chain.device_id, name="Till Again",
        public_key=DeviceKey.generate().public_bytes)])
    assert [m.get("t") for m in received] == ["error"], (received, closed)
    assert received[0]["fatal"] is True and received[0]["message"]
    # The device's input is at fault, not the relay: a client error code, not 'internal'.
    assert received[0]["code"] != "internal", received[0]
    # The device keeps its own key: the impostor key was not registered.
    assert query(relay, "SELECT public_key FROM devices WHERE store = ? AND device_id = ?",
                 (store, chain.device_id)) == [(chain.key.public_bytes,)]
    await still_serving(relay)


# -- after the handshake: bad entries -------------------------------------------------


def rejected_rows(relay: RelayProcess, store: str) -> list[tuple[Any, ...]]:
    order = "id" if relay.db else "rowid"  # in the order they were filed
    return query(relay, "SELECT client_id, device_id, seq, code, message, entry FROM rejected "
                        f"WHERE store = ? ORDER BY {order}", (store,))


def unchanged(before: dict[str, Any], after: dict[str, Any], *, new_entries: int = 0) -> None:
    """Nothing decided before changed: invoices, counters, server ids, stock, and every
    earlier receipt byte for byte; the chains only grew by ``new_entries``."""
    for table in ("invoices", "counters", "mappings", "stock", "prices"):
        assert after[table] == before[table], table
    assert after["receipts"][:len(before["receipts"])] == before["receipts"]
    assert after["entries"][:len(before["entries"])] == before["entries"]
    assert len(after["entries"]) == len(before["entries"]) + new_entries


async def test_a_float_for_money_is_rejected_kept_in_the_chain_and_the_chain_goes_on(
        relay: RelayProcess) -> None:
    store, chain, session = await selling(relay)
    try:
        before = snapshot(relay, store)
        shift = chain.entries[0].client_id
        body = {"lines": [{"product_id": "bread", "qty": 1, "unit_price": 3.2}],
                "payments": [{"method": "cash", "amount": 320}], "shift_client_id": shift}
        bad = chain.next("sale", body_bytes=msgpack.packb(body, use_bin_type=True))
        ingested = await session.push([bad])
        assert ingested.heads == {chain.device_id: 3}  # part of the signed chain
        receipt = (await session.receipts_until(3))[-1]
        assert (receipt["client_id"], receipt["status"], receipt["error"]["code"]) == (
            bad.client_id, "rejected", "schema"), receipt
        assert "float" in receipt["error"]["message"] and "unit_price" in \
            receipt["error"]["message"], receipt["error"]
        assert "invoice_no" not in receipt
        after = snapshot(relay, store)
        unchanged(before, after, new_entries=1)
        assert after["entries"][-1][2] == bad.client_id
        assert [(r[0], r[3]) for r in rejected_rows(relay, store)] == [(bad.client_id, "schema")]

        # The chain continues after it, and numbering with it.
        good = chain.next("sale", sale(*PRODUCT_SALE, shift_client_id=shift))
        await session.push([good])
        receipt = (await session.receipts_until(4))[-1]
        assert (receipt["client_id"], receipt["status"], receipt["invoice_no"]) == (
            good.client_id, "accepted", 2)
    finally:
        await session.close()


async def test_a_bad_signature_is_rejected_and_kept(relay: RelayProcess) -> None:
    store, chain, session = await selling(relay)
    try:
        before = snapshot(relay, store)
        shift = chain.entries[0].client_id
        forged = chain.next("sale", sale(*PRODUCT_SALE, shift_client_id=shift),
                            key=DeviceKey.generate(), advance=False)
        ingested = await session.push([forged])
        assert ingested.heads == {chain.device_id: 2}
        receipt = (await session.receipts_until(3))[-1]
        assert (receipt["client_id"], receipt["status"], receipt["error"]["code"]) == (
            forged.client_id, "rejected", "bad_signature"), receipt
        assert receipt["error"]["message"]
        unchanged(before, snapshot(relay, store))
        rows = rejected_rows(relay, store)
        assert [(r[0], r[2], r[3]) for r in rows] == [(forged.client_id, 3, "bad_signature")]
        wire = msgpack.unpackb(rows[0][5], raw=False)
        assert wire[0] == forged.client_id and wire[8] == forged.sig  # the entry itself
    finally:
        await session.close()
    await still_serving(relay)


async def test_resending_a_rejected_entry_adds_no_second_receipt(relay: RelayProcess) -> None:
    """A till resends everything above the relay's head on every round; an entry rejected
    outside the chain stays above it, so it comes back each time.  Its answer is already
    in the stream: a resend must not append another one (nor another `rejected` row)."""
    store, chain, session = await selling(relay)
    try:
        shift = chain.entries[0].client_id
        forged = chain.next("sale", sale(*PRODUCT_SALE, shift_client_id=shift),
                            key=DeviceKey.generate(), advance=False)
        await session.push([forged])
        await session.receipts_until(3)
        once = snapshot(relay, store)
        for _ in range(2):
            await session.push([forged])
        await session.quiet(0.3)
        answers = [(r["server_seq"], r["error"]["code"]) for r in relay_receipts(relay, store)
                   if r["client_id"] == forged.client_id]
        assert answers == [(3, "bad_signature")], answers
        assert snapshot(relay, store) == once
        assert len(rejected_rows(relay, store)) == 1
    finally:
        await session.close()


async def test_a_broken_chain_is_rejected_and_kept(relay: RelayProcess) -> None:
    """Right seq, wrong prev (a forked or altered chain).  Unlike a gap, resending from
    ``head + 1`` sends the very same entry again, so an ``ingested`` head alone leaves
    the device pushing it forever, never told why; it needs a rejection, and the entry
    must be kept like other refused ones.  (schemas/protocol/README.md currently
    documents this case as dropped silently, like a gap.)"""
    store, chain, session = await selling(relay)
    try:
        before = snapshot(relay, store)
        shift = chain.entries[0].client_id
        broken = chain.next("sale", sale(*PRODUCT_SALE, shift_client_id=shift),
                            prev=os.urandom(32), advance=False)
        for _ in range(2):  # what a till does on two successive rounds
            ingested = await session.push([broken])
            assert ingested.heads == {chain.device_id: 2}
        late = await session.quiet(0.5)
        unchanged(before, snapshot(relay, store))
        answers = [r for r in session.receipts if r["client_id"] == broken.client_id]
        assert [r["status"] for r in answers] == ["rejected"], (answers, late)
        assert answers[0]["error"]["code"] and answers[0]["error"]["message"]
        assert [r[0] for r in rejected_rows(relay, store)] == [broken.client_id]
    finally:
        await session.close()


async def test_a_gap_is_answered_with_the_head_to_resume_from(relay: RelayProcess) -> None:
    store, chain, session = await selling(relay)
    try:
        before = snapshot(relay, store)
        shift = chain.entries[0].client_id
        skipped = chain.next("cash_movement", {"direction": "in", "amount": 100,
                                               "reason": "float", "shift_client_id": shift})
        after_gap = chain.next("sale", sale(*PRODUCT_SALE, shift_client_id=shift))
        ingested = await session.push([after_gap])
        assert ingested.heads == {chain.device_id: 2}  # resume after seq 2
        assert [e for e in await session.quiet(0.4) if not isinstance(e, Ingested)] == []
        unchanged(before, snapshot(relay, store))
        assert rejected_rows(relay, store) == []

        # Resending from there is accepted as usual.
        await session.push([skipped, after_gap])
        statuses = [(r["client_id"], r["status"]) for r in await session.receipts_until(4)]
        assert statuses[-2:] == [(skipped.client_id, "accepted"), (after_gap.client_id,
                                                                    "accepted")]
    finally:
        await session.close()


async def test_batches_sent_before_the_first_is_answered_are_answered_in_order(
        relay: RelayProcess) -> None:
    """Six frames sent at once, more than the relay takes in before answering
    (``INGEST_WINDOW``), the fourth after a gap: each is answered, in order, and what
    follows the gap waits for it, as if they had been sent one by one."""
    store, chain, session = await selling(relay)
    try:
        shift = chain.entries[0].client_id
        batches = [[chain.next("sale", sale(*PRODUCT_SALE, shift_client_id=shift))
                    for _ in range(3)] for _ in range(6)]
        for batch in batches[:3] + batches[4:]:  # the fourth is left out: a gap
            session.link.send_entries(batch)
        await session.flush()
        answers = []
        for _ in range(5):
            answer = await session.wait_for(lambda e: isinstance(e, Ingested))
            assert isinstance(answer, Ingested)
            answers.append((answer.count, answer.heads))
        assert answers == [(3, {chain.device_id: 2 + 3 * n}) for n in (1, 2, 3, 3, 3)]
        assert [r[1] for r in invoices(relay, store)] == list(range(1, 11))

        # The missing batch and what followed it, resent, are numbered after the rest.
        session.link.send_entries(batches[3] + batches[4] + batches[5])
        await session.flush()
        answer = await session.wait_for(lambda e: isinstance(e, Ingested))
        assert isinstance(answer, Ingested) and answer.heads == {chain.device_id: 20}
        numbered = {r[2]: r[1] for r in invoices(relay, store)}
        assert [numbered[e.client_id] for b in batches for e in b] == list(range(2, 20))
        assert rejected_rows(relay, store) == []
    finally:
        await session.close()


async def test_an_entry_of_a_device_that_is_not_enrolled_is_rejected_and_kept(
        relay: RelayProcess) -> None:
    store, chain, session = await selling(relay)
    try:
        before = snapshot(relay, store)
        stranger = Chain(DeviceKey.generate(), str(uuid.uuid4()))
        entry = stranger.next("shift_open", {"cashier_id": "eve", "opening_cash": 0})
        ingested = await session.push([entry])
        assert stranger.device_id not in ingested.heads
        receipt = (await session.receipts_until(3))[-1]
        assert (receipt["client_id"], receipt["device_id"], receipt["status"],
                receipt["error"]["code"]) == (entry.client_id, stranger.device_id, "rejected",
                                              "unknown_device"), receipt
        assert receipt["error"]["message"]
        unchanged(before, snapshot(relay, store))
        rows = rejected_rows(relay, store)
        assert [(r[0], r[1], r[3]) for r in rows] == [(entry.client_id, stranger.device_id,
                                                       "unknown_device")]
        assert msgpack.unpackb(rows[0][5], raw=False)[7] == entry.body_bytes

        # An enrolled device of another store is a stranger here too.
        other_store, other, other_session = await selling(relay)
        await other_session.close()
        foreign = other.next("shift_open", {"cashier_id": "eve", "opening_cash": 0})
        await session.push([foreign])
        receipt = (await session.receipts_until(4))[-1]
        assert (receipt["client_id"], receipt["error"]["code"]) == (foreign.client_id,
                                                                    "unknown_device")
        assert [r[1] for r in invoices(relay, other_store)] == [1]
    finally:
        await session.close()


async def test_replayed_seq_with_other_content_and_reused_client_id_are_rejected(
        relay: RelayProcess) -> None:
    store, chain, session = await selling(relay)
    try:
        before = snapshot(relay, store)
        shift = chain.entries[0].client_id
        fork = chain.next("sale", sale(("bread", 9, 320), shift_client_id=shift), seq=2,
                          prev=chain.entries[0].hash, advance=False)
        await session.push([fork])
        receipt = (await session.receipts_until(3))[-1]
        assert (receipt["client_id"], receipt["error"]["code"]) == (fork.client_id,
                                                                    "conflicting_entry")
        reuse = chain.next("cash_movement", {"direction": "in", "amount": 100, "reason": "x",
                                             "shift_client_id": shift},
                           client_id=chain.entries[1].client_id, advance=False)
        await session.push([reuse])
        receipt = (await session.receipts_until(4))[-1]
        assert (receipt["seq"], receipt["error"]["code"]) == (3, "duplicate_client_id")
        unchanged(before, snapshot(relay, store))
        assert [r[3] for r in rejected_rows(relay, store)] == ["conflicting_entry",
                                                                "duplicate_client_id"]
        earlier = relay_receipts(relay, store)[1]
        assert (earlier["client_id"], earlier["invoice_no"]) == (chain.entries[1].client_id, 1)
    finally:
        await session.close()


async def test_a_malformed_entry_gets_a_non_fatal_error_and_the_link_stays_up(
        relay: RelayProcess) -> None:
    store, chain, session = await selling(relay)
    try:
        before = snapshot(relay, store)
        await session.ws.send(frame(t="entries", entries=[["not", "an", "entry"]]))
        error = await session.wait_for(lambda e: isinstance(e, RemoteError), timeout=5)
        assert isinstance(error, RemoteError), error
        assert (error.code, error.fatal) == ("bad_field", False) and error.message
        unchanged(before, snapshot(relay, store))
        shift = chain.entries[0].client_id
        good = chain.next("sale", sale(*PRODUCT_SALE, shift_client_id=shift))
        await session.push([good])
        assert (await session.receipts_until(3))[-1]["invoice_no"] == 2
    finally:
        await session.close()

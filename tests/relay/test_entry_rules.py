"""The entry rules at a running relay: validly signed but unusual entries, as a client
written from the protocol document alone might send them.  Each is answered with a
``rejected`` receipt with its code (kept in the chain, which goes on after it), or, for
an envelope field beyond its bound, with a non-fatal ``bad_field``; nothing decided
before changes.  The same rules at the till: ``tests/peer/test_entry_rules.py``.
"""

from __future__ import annotations

import uuid
from typing import Any

import msgpack
import pytest

from tests.doubles import sale
from tests.relay.processes import (
    Chain,
    RawSession,
    RelayProcess,
    invoices,
    now,
    snapshot,
)
from tests.relay.test_bad_input import (
    PRODUCT_SALE,
    enrolled,
    frame,
    rejected_rows,
    selling,
    unchanged,
)
from tillsync.peer.log import Entry, canonical_body, seal_bytes
from tillsync.peer.sync.engine import RemoteError


async def rejected_with(session: RawSession, chain: Chain, entry: Entry, code: str,
                        ) -> dict[str, Any]:
    """Push ``entry`` (the next of ``chain``) and return its receipt, which must be a
    ``rejected`` with ``code``; the entry is in the chain all the same."""
    ingested = await session.push([entry])
    assert ingested.heads == {chain.device_id: entry.seq}
    receipt = (await session.receipts_until(entry.seq))[-1]
    assert (receipt["client_id"], receipt["status"]) == (entry.client_id, "rejected"), receipt
    assert receipt["error"]["code"] == code, receipt
    assert "invoice_no" not in receipt and "shift_server_id" not in receipt
    assert len(receipt["error"]["message"]) > 10
    return receipt


async def the_chain_goes_on(relay: RelayProcess, store: str, session: RawSession,
                            chain: Chain, shift: str, invoice_no: int) -> None:
    good = chain.next("sale", sale(*PRODUCT_SALE, shift_client_id=shift))
    await session.push([good])
    receipt = (await session.receipts_until(good.seq))[-1]
    assert (receipt["client_id"], receipt["status"], receipt["invoice_no"]) == (
        good.client_id, "accepted", invoice_no), receipt
    assert [r[1] for r in invoices(relay, store)] == list(range(1, invoice_no + 1))


# -- finding 2: a discount larger than its line --------------------------------------


async def test_a_sale_with_a_negative_line_is_rejected(relay: RelayProcess) -> None:
    store, chain, session = await selling(relay)
    try:
        before = snapshot(relay, store)
        shift = chain.entries[0].client_id
        body = sale(("bread", 1, 320), cash=0, shift_client_id=shift)
        body["lines"][0]["discount"] = 500
        receipt = await rejected_with(session, chain, chain.next("sale", body), "negative_line")
        assert "discount 500" in receipt["error"]["message"]
        assert "total" not in receipt
        unchanged(before, snapshot(relay, store), new_entries=1)
        await the_chain_goes_on(relay, store, session, chain, shift, 2)
    finally:
        await session.close()


# -- finding 5: the canonical form -----------------------------------------------------


def overlong_ints(body: dict[str, Any]) -> bytes:
    """``body`` with its keys sorted but every integer written as an int64 (9 bytes)."""
    packer = msgpack.Packer(use_bin_type=True)
    out = bytearray()

    def pack(value: Any) -> None:
        if isinstance(value, dict):
            out.extend(packer.pack_map_header(len(value)))
            for key in sorted(value):
                out.extend(packer.pack(key))
                pack(value[key])
        elif isinstance(value, list):
            out.extend(packer.pack_array_header(len(value)))
            for item in value:
                pack(item)
        elif type(value) is int:
            out.extend(b"\xd3" + value.to_bytes(8, "big", signed=True))
        else:
            out.extend(packer.pack(value))
    pack(body)
    return bytes(out)


@pytest.mark.parametrize("case", ["unsorted keys", "overlong integers"])
async def test_a_body_not_in_canonical_form_is_rejected(relay: RelayProcess,
                                                        case: str) -> None:
    store, chain, session = await selling(relay)
    try:
        before = snapshot(relay, store)
        shift = chain.entries[0].client_id
        body = sale(*PRODUCT_SALE, shift_client_id=shift)
        if case == "unsorted keys":
            raw = msgpack.packb(dict(reversed(list(body.items()))), use_bin_type=True)
        else:
            raw = overlong_ints(body)
        assert raw != canonical_body(body) and msgpack.unpackb(raw, raw=False) == body
        await rejected_with(session, chain, chain.next("sale", body_bytes=raw),
                            "not_canonical")
        unchanged(before, snapshot(relay, store), new_entries=1)
        await the_chain_goes_on(relay, store, session, chain, shift, 2)
    finally:
        await session.close()


@pytest.mark.parametrize("client_id", [str(uuid.uuid4()).upper(), str(uuid.uuid1()),
                                       "sale-1"])
async def test_a_client_id_that_is_not_a_lowercase_uuid_v4_is_rejected(
        relay: RelayProcess, client_id: str) -> None:
    store, chain, session = await selling(relay)
    try:
        before = snapshot(relay, store)
        shift = chain.entries[0].client_id
        entry = chain.next("sale", sale(*PRODUCT_SALE, shift_client_id=shift),
                           client_id=client_id)
        receipt = await rejected_with(session, chain, entry, "bad_client_id")
        assert client_id in receipt["error"]["message"]
        unchanged(before, snapshot(relay, store), new_entries=1)
        await the_chain_goes_on(relay, store, session, chain, shift, 2)
    finally:
        await session.close()


async def test_an_overlong_ticket_is_refused_with_the_frame(relay: RelayProcess) -> None:
    """The envelope is bounded like the body: a 100,000-character ticket is a
    ``bad_field`` (non-fatal); nothing of the frame is stored, and the link goes on."""
    store, chain, session = await selling(relay)
    try:
        before = snapshot(relay, store)
        shift = chain.entries[0].client_id
        body = sale(*PRODUCT_SALE, shift_client_id=shift)
        long = seal_bytes(chain.key, client_id=str(uuid.uuid4()), device_id=chain.device_id,
                          seq=chain.seq + 1, prev=chain.prev, kind="sale",
                          client_created_at=now(), ticket="T" * 100_000,
                          body_bytes=canonical_body(body))
        wire = [long.client_id, long.device_id, long.seq, long.prev, long.kind,
                long.client_created_at, long.ticket, long.body_bytes, long.sig]
        await session.ws.send(frame(t="entries", entries=[wire]))
        error = await session.wait_for(lambda e: isinstance(e, RemoteError), timeout=5)
        assert isinstance(error, RemoteError), error
        assert (error.code, error.fatal) == ("bad_field", False), error
        assert "ticket" in error.message and "32" in error.message
        unchanged(before, snapshot(relay, store))
        await the_chain_goes_on(relay, store, session, chain, shift, 2)
    finally:
        await session.close()


async def test_an_overlong_string_in_a_body_is_rejected(relay: RelayProcess) -> None:
    store, chain, session = await selling(relay)
    try:
        shift = chain.entries[0].client_id
        body = sale(*PRODUCT_SALE, shift_client_id=shift, note="n" * 100_000)
        receipt = await rejected_with(session, chain, chain.next("sale", body), "schema")
        assert "body.note" in receipt["error"]["message"]
        assert "at most 1000" in receipt["error"]["message"]
        assert len(receipt["error"]["message"]) < 300
        await the_chain_goes_on(relay, store, session, chain, shift, 2)
    finally:
        await session.close()


# -- finding 6: shifts ------------------------------------------------------------------


async def test_nothing_more_is_accepted_in_a_closed_shift(relay: RelayProcess) -> None:
    """A sale or a cash movement in a closed shift, and a second close of it, are
    rejected ``shift_closed``; a new shift of the device goes on as usual."""
    store, chain, session = await selling(relay)
    try:
        shift = chain.entries[0].client_id
        close = chain.next("shift_close", {"open_shift_client_id": shift, "closing_cash": 640})
        await session.push([close])
        assert (await session.receipts_until(3))[-1]["status"] == "accepted"
        before = snapshot(relay, store)
        late = chain.next("sale", sale(*PRODUCT_SALE, shift_client_id=shift))
        receipt = await rejected_with(session, chain, late, "shift_closed")
        assert shift in receipt["error"]["message"]
        move = chain.next("cash_movement", {"direction": "in", "amount": 100,
                                            "reason": "float", "shift_client_id": shift})
        await rejected_with(session, chain, move, "shift_closed")
        again = chain.next("shift_close", {"open_shift_client_id": shift, "closing_cash": 0})
        receipt = await rejected_with(session, chain, again, "shift_closed")
        assert "closed once" in receipt["error"]["message"]
        unchanged(before, snapshot(relay, store), new_entries=3)
        assert [r[3] for r in rejected_rows(relay, store)] == ["shift_closed"] * 3

        reopened = chain.next("shift_open", {"cashier_id": "ann", "opening_cash": 0})
        await session.push([reopened])
        await session.receipts_until(reopened.seq)
        await the_chain_goes_on(relay, store, session, chain, reopened.client_id, 2)
    finally:
        await session.close()


async def test_a_close_and_a_sale_after_it_in_one_batch(relay: RelayProcess) -> None:
    """Decided in chain order inside one batch too."""
    store, chain, session = await selling(relay)
    try:
        shift = chain.entries[0].client_id
        close = chain.next("shift_close", {"open_shift_client_id": shift, "closing_cash": 640})
        late = chain.next("sale", sale(*PRODUCT_SALE, shift_client_id=shift))
        await session.push([close, late])
        receipts = {r["client_id"]: r for r in await session.receipts_until(4)}
        assert receipts[close.client_id]["status"] == "accepted"
        assert receipts[late.client_id]["error"]["code"] == "shift_closed"
        assert [r[1] for r in invoices(relay, store)] == [1]
    finally:
        await session.close()


async def test_a_sale_in_another_devices_shift_is_rejected(relay: RelayProcess) -> None:
    """Device B records in device A's open shift, known at the relay: ``foreign_shift``.
    (Entries that waited for the shift get the same answer once it comes:
    tests/relay/test_acceptance.py, test_entries_wait_for_a_shift_that_arrives_later.)"""
    store, chain, session = await selling(relay)
    other = await enrolled(relay, store)
    theirs = await RawSession.open(relay.url, store, other.device_id, other.key)
    try:
        shift = chain.entries[0].client_id
        before = snapshot(relay, store)
        entries = [other.next("sale", sale(*PRODUCT_SALE, shift_client_id=shift)),
                   other.next("cash_movement", {"direction": "in", "amount": 100,
                                                "reason": "float", "shift_client_id": shift}),
                   other.next("shift_close", {"open_shift_client_id": shift,
                                              "closing_cash": 0})]
        await theirs.push(entries)
        receipts = [r for r in await theirs.receipts_until(5) if r["device_id"] ==
                    other.device_id]
        assert [(r["client_id"], r["status"], r["error"]["code"]) for r in receipts] == [
            (e.client_id, "rejected", "foreign_shift") for e in entries]
        assert chain.device_id in receipts[0]["error"]["message"]
        after = snapshot(relay, store)  # entries of two devices: compared as sets
        assert set(before["entries"]) <= set(after["entries"])
        unchanged({**before, "entries": []}, {**after, "entries": [
            e for e in after["entries"] if e not in before["entries"]]}, new_entries=3)
        # A's shift is still open for A.
        await the_chain_goes_on(relay, store, session, chain, shift, 2)
    finally:
        await theirs.close()
        await session.close()

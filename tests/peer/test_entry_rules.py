"""The entry rules at the till: what ``Till.record`` refuses, and what a forwarded entry
the relay would reject does to a till's views (nothing).

The same rules at a real relay: ``tests/relay/test_entry_rules.py``.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import msgpack
import pytest

from tests.doubles import SHIFT, sale, stocked_till
from tests.peer.test_receive_entries import bread, enrolled_till, make_device
from tests.relay.test_entry_rules import overlong_ints
from tillsync.peer.entry_rules import entry_problem, is_canonical
from tillsync.peer.errors import InvalidInput, UnknownReference
from tillsync.peer.log import canonical_body
from tillsync.peer.store import Till


async def test_a_discount_larger_than_its_line_is_refused(tmp_path: Path) -> None:
    async with await stocked_till(tmp_path) as till:
        body = sale(("bread", 2, 320), cash=0)
        body["lines"][0]["discount"] = 641
        with pytest.raises(InvalidInput, match=r"lines\[0\]\.discount 641 is larger than the "
                                               r"line's amount 640"):
            await till.record("sale", body)
        body["lines"][0]["discount"] = 640  # a line given away is fine
        await till.record("sale", body)


async def test_a_weighed_line_is_compared_with_its_rounded_amount(tmp_path: Path) -> None:
    """0.335 kg at 100 is 33.5, rounded half up to 34: a discount of 34 zeroes the line
    (and the relay agrees, since it computes the same amount)."""
    async with await stocked_till(tmp_path) as till:
        body = sale(("cheese", "0.335", 100), cash=0)
        body["lines"][0]["discount"] = 34
        await till.record("sale", body)
        body["lines"][0]["discount"] = 35
        with pytest.raises(InvalidInput, match="larger than the line's amount 34"):
            await till.record("sale", body)


async def test_nothing_more_goes_into_a_closed_shift(tmp_path: Path) -> None:
    async with await stocked_till(tmp_path) as till:
        await till.record("shift_close", {"open_shift_client_id": SHIFT, "closing_cash": 0})
        with pytest.raises(InvalidInput, match=f"shift {SHIFT} is closed; a sale belongs in "
                                               "an open shift"):
            await till.record("sale", sale(("bread", 1, 320)))
        with pytest.raises(InvalidInput, match="a cash_movement belongs in an open shift"):
            await till.record("cash_movement", {"direction": "in", "amount": 100,
                                                "reason": "float", "shift_client_id": SHIFT})
        with pytest.raises(InvalidInput, match="is closed already; a shift is closed once"):
            await till.record("shift_close", {"open_shift_client_id": SHIFT,
                                              "closing_cash": 0})
        assert len(await till.entries(kind="shift_close")) == 1


async def test_a_till_records_only_in_a_shift_it_opened(tmp_path: Path) -> None:
    """Another till's shift, open and known here (forwarded over the LAN), is not this
    till's: a sale or a cash movement naming it is refused; this till, enrolled as
    admin, may close it (a dead till's shift), once."""
    till = await enrolled_till(tmp_path)
    try:
        await till.put("cashiers", "ann", {"name": "Ann", "role": "cashier", "pin": "1234"})
        other = make_device("Till 2")
        theirs = other.chain.next("shift_open", {"cashier_id": "ann", "opening_cash": 0})
        await till.add_certs([other.cert])
        assert await till.receive_entries([theirs]) == 1
        shift = theirs.client_id
        for kind, body in [
            ("sale", sale(("bread", 1, 320), shift_client_id=shift)),
            ("cash_movement", {"direction": "in", "amount": 100, "reason": "float",
                               "shift_client_id": shift}),
        ]:
            with pytest.raises(InvalidInput, match=f"shift {shift} was opened by device "
                                                   f"{other.id}"):
                await till.record(kind, body)
        assert await till.entries(kind="sale") == []
        assert till.role_of(till.device_id) == "admin"
        await till.record("shift_close", {"open_shift_client_id": shift, "closing_cash": 0})
        assert [s["open"] for s in await till.shifts()] == [False]
        with pytest.raises(UnknownReference, match="is closed already"):
            await till.record("shift_close", {"open_shift_client_id": shift,
                                              "closing_cash": 0})
        # Its own shift works as ever.
        mine = await till.record("shift_open", {"cashier_id": "ann", "opening_cash": 0})
        await till.record("sale", sale(("bread", 1, 320), shift_client_id=mine.client_id))
    finally:
        await till.close()


@pytest.mark.parametrize("client_id", [
    str(uuid.uuid1()),                                # a UUID, but version 1
    "0b7e7f52-1f7a-4c3e-1d55-3c0f4a1e9b21",           # version 4, wrong variant
    "{0b7e7f52-1f7a-4c3e-9d55-3c0f4a1e9b21}",          # braces
    "0b7e7f521f7a4c3e9d553c0f4a1e9b21",               # no hyphens
    "urn:uuid:0b7e7f52-1f7a-4c3e-9d55-3c0f4a1e9b21",  # a URN
])
async def test_a_client_id_that_is_not_a_uuid_v4_is_refused(tmp_path: Path,
                                                            client_id: str) -> None:
    async with await stocked_till(tmp_path) as till:
        with pytest.raises(InvalidInput, match="is not a UUID v4 written lowercase"):
            await till.record("sale", sale(("bread", 1, 320)), client_id=client_id)
        assert await till.entries(kind="sale") == []


async def test_an_uppercase_client_id_is_taken_lowercase(tmp_path: Path) -> None:
    async with await stocked_till(tmp_path) as till:
        cid = str(uuid.uuid4())
        entry = await till.record("sale", sale(("bread", 1, 320)), client_id=cid.upper())
        assert entry.client_id == cid
        with pytest.raises(InvalidInput, match="'5' is not a UUID v4"):  # JSON from the API
            await till.record("sale", sale(("bread", 1, 320)), client_id=5)  # type: ignore[arg-type]


def test_canonical_bodies_and_what_is_not() -> None:
    body = {"b": 1, "a": {"d": 300, "c": "x"}}
    good = canonical_body(body)
    assert is_canonical(good, msgpack.unpackb(good))  # as decoded: in the wire's order
    unsorted = msgpack.packb({"b": 1, "a": {"d": 300, "c": "x"}}, use_bin_type=True)
    assert not is_canonical(unsorted, msgpack.unpackb(unsorted))
    one, x = {"a": 1}, {"a": "x"}
    assert is_canonical(b"\x81\xa1a\x01", one) and is_canonical(b"\x81\xa1a\xa1x", x)
    for overlong, decoded in [(b"\x81\xa1a\xcd\x00\x01", one),  # 1 as uint16
                              (b"\x81\xa1a\xd9\x01x", x),  # "x" as str8
                              (b"\x81\xd9\x01a\x01", one),  # the key as str8
                              (b"\x82\xa1a\x01\xa1a\x01", one)]:  # a repeated key
        assert msgpack.unpackb(overlong) == decoded and not is_canonical(overlong, decoded)


async def test_a_forwarded_entry_the_relay_would_reject_has_no_effect_here(
        tmp_path: Path) -> None:
    """Kept as signed (it is part of its device's chain) but without effect, as the
    relay will reject it: a body not in canonical form (unsorted keys, overlong
    integers), a client id that is not a lowercase UUID v4."""
    till = await enrolled_till(tmp_path)
    try:
        other = make_device("Till 2")
        await till.add_certs([other.cert])
        move = {"product_id": "bread", "direction": "in", "qty": "5", "reason": "delivery"}
        unsorted = msgpack.packb(dict(reversed(list(move.items()))), use_bin_type=True)
        assert entry_problem(str(uuid.uuid4()), "stock_move", unsorted,
                             msgpack.unpackb(unsorted)) is not None
        overlong = overlong_ints({**move, "qty": 5})
        bad = [other.chain.next("stock_move", body_bytes=unsorted),
               other.chain.next("stock_move", body_bytes=overlong),
               other.chain.next("stock_move", move, client_id=str(uuid.uuid4()).upper()),
               other.chain.next("stock_move", move, client_id=str(uuid.uuid1()))]
        assert await till.receive_entries(bad) == 4
        assert bread(await till.stock()) == "0"
        good = other.chain.next("stock_move", move)
        assert await till.receive_entries([good]) == 1
        assert bread(await till.stock()) == "5"
    finally:
        await till.close()
    async with await Till.open(tmp_path) as again:  # the views rebuilt alike
        await again.rebuild_views()
        assert bread(await again.stock()) == "5"

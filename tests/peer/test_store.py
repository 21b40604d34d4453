"""The Till API on a real SQLite store: the log, tickets, views, bad input."""

from __future__ import annotations

import asyncio
import os
import stat
import uuid
from decimal import Decimal
from pathlib import Path

import pytest

from tests.doubles import SHIFT, sale, stocked_till
from tillsync.peer.errors import (
    DuplicateEntry,
    InvalidInput,
    StoreError,
    StoreExists,
    StoreLocked,
    StoreNotFound,
    UnknownReference,
)
from tillsync.peer.store import Till
from tillsync.schemas import SchemaViolation, UnknownKind


async def snapshot_of(till: Till) -> tuple[object, ...]:
    """Everything a failed call must leave untouched."""
    return (till.master.heads(), [e.hash for e in await till.entries()],
            await till.rebuild_views(), await till.stock())


async def test_init_makes_an_owner_only_key_and_refuses_a_second_init(tmp_path: Path) -> None:
    info = await Till.init(tmp_path / "t", name="Till 3")
    key = tmp_path / "t" / "device.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "t").stat().st_mode) == 0o700
    assert info["series"] == "TILL3" and "PRIVATE" not in str(info)
    with pytest.raises(StoreExists):
        await Till.init(tmp_path / "t", name="again")
    with pytest.raises(StoreNotFound, match="peer init"):
        await Till.open(tmp_path / "nothing")


async def test_entries_get_contiguous_seq_chain_and_consecutive_tickets(tmp_path: Path) -> None:
    async with await stocked_till(tmp_path) as till:
        entries = [await till.record("sale", sale(("bread", 1, 320))) for _ in range(3)]
        entries.append(await till.record("stock_move", {"product_id": "bread", "direction": "in",
                                                        "qty": 10, "reason": "delivery"}))
        entries.append(await till.record("sale", sale(("cheese", "0.250", 1890))))
        assert [e.seq for e in entries] == [2, 3, 4, 5, 6]  # seq 1 is the shift_open
        assert [e.ticket for e in entries] == ["TILL1-000001", "TILL1-000002", "TILL1-000003",
                                               None, "TILL1-000004"]
        for before, after in zip(entries, entries[1:], strict=False):
            assert after.prev == before.hash
        assert (await till.verify()).ok
    # numbering continues after a reopen
    async with await Till.open(tmp_path) as till:
        nxt = await till.record("sale", sale(("bread", 1, 320)))
        assert (nxt.seq, nxt.ticket) == (7, "TILL1-000005")


async def test_concurrent_records_share_commits_and_stay_contiguous(tmp_path: Path) -> None:
    async with await stocked_till(tmp_path) as till:
        results = await asyncio.gather(*(till.record("sale", sale(("bread", 1, 320)))
                                         for _ in range(200)))
        assert sorted(e.seq for e in results) == list(range(2, 202))
        assert sorted(e.ticket or "" for e in results) == [f"TILL1-{n:06d}"
                                                          for n in range(1, 201)]
        stock = {r["product_id"]: r for r in await till.stock()}
        assert stock["bread"]["qty"] == "-200"
        assert (await till.verify()).ok


async def test_retry_with_the_same_client_id_returns_the_stored_entry(tmp_path: Path) -> None:
    async with await stocked_till(tmp_path) as till:
        cid = str(uuid.uuid4())
        first = await till.record("sale", sale(("bread", 2, 320)), client_id=cid)
        again = await till.record("sale", sale(("bread", 2, 320)), client_id=cid.upper())
        assert again == first
        assert len(await till.entries(kind="sale")) == 1
        with pytest.raises(DuplicateEntry, match=cid):
            await till.record("sale", sale(("bread", 3, 320)), client_id=cid)
        with pytest.raises(InvalidInput, match="not a UUID"):
            await till.record("sale", sale(("bread", 3, 320)), client_id="123")


@pytest.mark.parametrize(
    ("kind", "body", "error", "message"),
    [
        ("sael", {}, UnknownKind, "known kinds"),
        ("sale", sale(("ghost", 1, 100)), UnknownReference, "unknown product 'ghost'"),
        ("sale", {**sale(("bread", 1, 320)), "payments": [{"method": "cash", "amount": 3.2}]},
         SchemaViolation, "float"),
        ("sale", sale(("bread", 1, 320), shift_client_id=str(uuid.UUID(int=7))),
         UnknownReference, "not open"),
        ("sale", {**sale(("bread", 1, 320)), "payments": [{"method": "account", "amount": 320}]},
         InvalidInput, "needs body.customer_id"),
        ("shift_close", {"open_shift_client_id": str(uuid.UUID(int=9)), "closing_cash": 0},
         UnknownReference, "unknown"),
        ("refund", {"original_sale_client_id": str(uuid.UUID(int=9)), "method": "cash",
                    "amount": 1, "reason": "x", "lines": [{"product_id": "bread", "qty": 1,
                                                           "unit_price": 1}]},
         UnknownReference, "no sale"),
        ("journal_entry", {"lines": [{"account": "cash", "debit": 5, "credit": 0},
                                     {"account": "sales", "debit": 0, "credit": 4}]},
         InvalidInput, "differ"),
        ("shift_open", {"cashier_id": "nobody", "opening_cash": 0}, UnknownReference, "nobody"),
    ],
)
async def test_bad_entries_are_refused_and_nothing_changes(
    tmp_path: Path, kind: str, body: dict[str, object], error: type[Exception], message: str
) -> None:
    async with await stocked_till(tmp_path) as till:
        await till.record("sale", sale(("bread", 1, 320)))
        before = await snapshot_of(till)
        with pytest.raises(error, match=message):
            await till.record(kind, body)
        assert await snapshot_of(till) == before
        # the store still works, and numbering did not skip
        nxt = await till.record("sale", sale(("bread", 1, 320)))
        assert (nxt.seq, nxt.ticket) == (3, "TILL1-000002")


async def test_a_bad_write_in_a_batch_does_not_spoil_the_others(tmp_path: Path) -> None:
    async with await stocked_till(tmp_path) as till:
        results = await asyncio.gather(
            till.record("sale", sale(("bread", 1, 320))),
            till.record("sale", sale(("ghost", 1, 320))),
            till.record("sale", sale(("bread", 1, 320))),
            return_exceptions=True,
        )
        assert isinstance(results[1], UnknownReference)
        assert [getattr(r, "ticket", None) for r in results] == ["TILL1-000001", None,
                                                                 "TILL1-000002"]


async def test_derived_views_follow_the_log(tmp_path: Path) -> None:
    async with await stocked_till(tmp_path) as till:
        await till.record("stock_move", {"product_id": "bread", "direction": "in", "qty": 24,
                                         "reason": "delivery"})
        await till.record("stock_move", {"product_id": "cheese", "direction": "adjust",
                                         "qty": "-0.125", "reason": "waste"})
        s1 = await till.record("sale", sale(("bread", 3, 320), ("tomato", "0.75", 480)))
        await till.record("sale", {**sale(("bread", 20, 320)),
                                   "payments": [{"method": "account", "amount": 6400}],
                                   "customer_id": "bob"})
        await till.record("refund", {"original_sale_client_id": s1.client_id, "method": "cash",
                                     "amount": 320, "reason": "stale", "shift_client_id": SHIFT,
                                     "lines": [{"product_id": "bread", "qty": 1,
                                                "unit_price": 320}]})
        await till.record("cash_movement", {"direction": "out", "amount": 2000,
                                            "reason": "bank", "shift_client_id": SHIFT})
        await till.record("customer_payment", {"customer_id": "bob", "amount": 1000,
                                               "method": "cash", "shift_client_id": SHIFT})
        held = await till.record("held_sale", {"lines": [{"product_id": "bread", "qty": 1,
                                                          "unit_price": 320}]})
        assert await till.held_sales() == [held.client_id]
        await till.record("sale", sale(("bread", 1, 320),
                                       held_transaction_client_id=held.client_id))
        assert await till.held_sales() == []

        stock = {r["product_id"]: r for r in await till.stock()}
        assert stock["bread"]["qty"] == "1"  # 24 - 3 - 20 + 1 - 1
        assert stock["bread"]["low"] is True  # below reorder level 5
        assert stock["cheese"]["qty"] == "-0.125"
        assert "qty" not in stock["tomato"] and stock["tomato"]["suggested_price"] == 480
        # cash: 10000 opening + (960 + 360) cash sale - 320 refund - 2000 out + 1000 payment
        #       + 320 resumed sale
        assert await till.expected_cash(SHIFT) == 10000 + 1320 - 320 - 2000 + 1000 + 320
        assert await till.balance("bob") == 6400 - 1000
        stored = {(v, k): x for v in ("stock", "cash", "balance") for k, x in
                  (await till._db.view(v)).items()}
        rebuilt = {key: x for key, x in (await till.rebuild_views()).items()
                   if key[0] in ("stock", "cash", "balance")}
        assert stored == rebuilt and rebuilt[("stock", "bread")] == Decimal(1)

        await till.record("shift_close", {"open_shift_client_id": SHIFT, "closing_cash": 9000,
                                          "variance_reason": "miscount"})
        with pytest.raises(UnknownReference, match="closed"):
            await till.record("sale", sale(("bread", 1, 320)))
        assert (await till.status())["open_shifts"] == []
        count, oldest = await till.pending(limit=3)
        assert count == len(await till.entries()) and len(oldest) == 3


async def test_second_writer_is_refused_readers_are_not(tmp_path: Path) -> None:
    async with await stocked_till(tmp_path):
        with pytest.raises(StoreLocked, match=f"process {os.getpid()}"):
            await Till.open(tmp_path)
        async with await Till.open(tmp_path, readonly=True) as reader:
            assert reader.get("products", "bread") is not None
            with pytest.raises(StoreError, match="read-only"):
                await reader.record("sale", sale(("bread", 1, 320)))


async def test_cashier_pin_check_and_reads_hide_the_hash(tmp_path: Path) -> None:
    async with await stocked_till(tmp_path) as till:
        assert till.check_pin("ann", "1234") and not till.check_pin("ann", "0000")
        assert "pin_hash" not in (till.get("cashiers", "ann") or {})
        assert all("pin_hash" not in r for r in till.all("cashiers").values())


async def test_a_rejected_copy_of_an_accepted_entry_does_not_replace_its_acceptance(
        tmp_path: Path) -> None:
    """Found by the simulation (tests/sim): an altered copy of an already accepted sale,
    sent under the same client_id, is rejected by the relay (``conflicting_entry``) with a
    receipt keyed by that client_id.  That rejection concerns the copy; it must not
    replace the sale's acceptance (and its invoice number) on the till."""
    till = await stocked_till(tmp_path / "t")
    try:
        entry = await till.record("sale", sale(("bread", 1, 320)))
        about = {"client_id": entry.client_id, "device_id": till.device_id, "seq": entry.seq,
                 "kind": "sale", "warnings": []}
        waiting = {**about, "server_seq": 1, "status": "waiting", "waiting_for": [SHIFT]}
        accepted = {**about, "server_seq": 2, "status": "accepted", "series": "INV",
                    "invoice_no": 1, "total": 320}
        copy = {**about, "server_seq": 3, "status": "rejected",
                "error": {"code": "conflicting_entry", "message": "seq 2 is already held"}}
        for n, receipt in enumerate((waiting, accepted, copy), start=1):
            await till.store_receipts([receipt], n, bytes(32), "2026-05-01T10:00:00.000Z")
            if receipt is waiting:  # a waiting receipt is still superseded
                assert [r["status"] for r in await till.receipts()] == ["waiting"]

        assert [(r["status"], r.get("invoice_no")) for r in await till.receipts()] == \
            [("accepted", 1)]
        assert await till.receipts("rejected") == []
        assert till.receipts_position()[0] == 3
    finally:
        await till.close()

"""Deciding one entry takes effect whole or not at all (``relay.decide``, ``relay.undo``):
an entry that would take a running figure out of the range, or that fails while it is
applied, is rejected alone, and the store's counters, stock and totals stay exact.
In process, on real SQLite storage."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.doubles import sale
from tests.relay.processes import Chain, now
from tests.relay.test_postgres_storage import enrolled
from tillsync.peer.identity import DeviceKey
from tillsync.peer.log import Entry
from tillsync.relay.ingest import Batch, IngestResult, ingest_all
from tillsync.relay.server import Relay, _Job
from tillsync.relay.storage.sqlite import SQLiteStorage
from tillsync.schemas.limits import INTEGER_MAX

CATALOGUE: dict[str, dict[str, Any]] = {
    "bread": {"name": "Bread", "sku": "B1", "price": 320},
    # Not a valid record (the relay's master data is checked), so moving its stock fails
    # half-way through deciding a sale: what an unexpected error looks like.
    "odd": {"name": "Odd", "sku": "O1", "price": 1, "reorder_level": "not a number"},
}
KEY = DeviceKey.generate()


async def push(storage: SQLiteStorage, store: str, chain: Chain) -> IngestResult:
    """Decide the chain's entries the relay does not hold yet (it skips the others)."""
    entries = chain.entries
    async with storage.transaction() as txn:
        batch = Batch(store, entries, {chain.device_id: chain.key.public_bytes},
                      CATALOGUE.get, KEY)
        return (await ingest_all(txn, [batch], now()))[0]


async def read(storage: SQLiteStorage, store: str) -> dict[str, Any]:
    return {
        "stock": dict(await storage.read("SELECT product_id, qty FROM stock WHERE store = ?",
                                         (store,))),
        "counters": dict(await storage.read(
            "SELECT name, value FROM counters WHERE store = ?", (store,))),
        "revenue": (await storage.read("SELECT coalesce(sum(revenue), 0) FROM tally_sales "
                                       "WHERE store = ?", (store,)))[0][0],
        "invoices": [r[0] for r in await storage.read(
            "SELECT invoice_no FROM invoices WHERE store = ? ORDER BY invoice_no", (store,))],
    }


async def selling(storage: SQLiteStorage, qty: int) -> tuple[str, Chain, Entry]:
    """A new store, its till's chain: a shift_open (returned) and a sale of ``qty`` bread."""
    store = f"store-{uuid.uuid4().hex[:8]}"
    chain = await enrolled(storage, store)  # type: ignore[arg-type]
    shift = chain.next("shift_open", {"cashier_id": "ann", "opening_cash": 0})
    chain.next("sale", sale(("bread", qty, 320), shift_client_id=shift.client_id))
    return store, chain, shift


def codes(result: IngestResult) -> list[tuple[str, str | None]]:
    return [(r["status"], r.get("error", {}).get("code")) for r in result.receipts]


async def stock_beyond_the_range(path: Path) -> None:
    storage = await SQLiteStorage.open(path)
    try:
        store = f"store-{uuid.uuid4().hex[:8]}"
        chain = await enrolled(storage, store)  # type: ignore[arg-type]
        most = 999_999_999  # the largest quantity; nine of them fit the range, ten do not
        for _ in range(10):
            chain.next("stock_move", {"product_id": "bread", "direction": "in", "qty": most,
                                      "reason": "delivery"})
        assert codes(await push(storage, store, chain)) == [("accepted", None)] * 9 + [
            ("rejected", "out_of_range")]
        assert (await read(storage, store))["stock"] == {"bread": 9 * most * 10**6}
        # Selling takes it back down; the stock stays exact.
        shift = chain.next("shift_open", {"cashier_id": "ann", "opening_cash": 0})
        chain.next("sale", sale(("bread", most, 1), cash=most, shift_client_id=shift.client_id))
        assert codes(await push(storage, store, chain)) == [("accepted", None)] * 2
        assert (await read(storage, store))["stock"] == {"bread": 8 * most * 10**6}
        assert 9 * most * 10**6 <= INTEGER_MAX < 10 * most * 10**6
    finally:
        await storage.close()


def test_a_move_that_would_take_stock_out_of_the_range_is_rejected_alone(
        tmp_path: Path) -> None:
    asyncio.run(stock_beyond_the_range(tmp_path / "relay.db"))


async def failing_half_way(path: Path) -> None:
    storage = await SQLiteStorage.open(path)
    try:
        store, chain, shift = await selling(storage, 2)
        await push(storage, store, chain)
        before = await read(storage, store)
        # bread's stock moves and an invoice number is taken before odd's line fails.
        bad = chain.next("sale", sale(("bread", 5, 320), ("odd", 1, 1),
                                      shift_client_id=shift.client_id))
        good = chain.next("sale", sale(("bread", 1, 320), shift_client_id=shift.client_id))
        result = await push(storage, store, chain)
        decided = {r["client_id"]: r for r in result.receipts}
        assert decided[bad.client_id]["error"]["code"] == "undecidable"
        assert decided[good.client_id]["invoice_no"] == 2  # the bad one's number was undone
        after = await read(storage, store)
        assert after["stock"] == {"bread": before["stock"]["bread"] - 1_000_000}
        assert after["revenue"] == before["revenue"] + 320
        assert after["invoices"] == [1, 2]
        assert after["counters"]["invoice:INV"] == 2
    finally:
        await storage.close()


def test_an_entry_that_fails_half_way_is_rejected_with_nothing_of_it_kept(
        tmp_path: Path) -> None:
    asyncio.run(failing_half_way(tmp_path / "relay.db"))


class _KeyThatCannotSign:
    """A store key whose signature fails: every transaction deciding its batch fails."""

    def sign(self, data: bytes) -> bytes:
        raise RuntimeError("this key cannot sign")


async def grouped_with_a_failing_batch(path: Path) -> None:
    relay = Relay(await SQLiteStorage.open(path), DeviceKey.generate())
    try:
        stores = [f"store-{uuid.uuid4().hex[:8]}" for _ in range(2)]
        chains = [await enrolled(relay.storage, s) for s in stores]  # type: ignore[arg-type]
        jobs = []
        for store, chain, key in zip(stores, chains, [_KeyThatCannotSign(), KEY], strict=True):
            shift = chain.next("shift_open", {"cashier_id": "ann", "opening_cash": 0})
            chain.next("sale", sale(("bread", 1, 320), shift_client_id=shift.client_id))
            batch = Batch(store, chain.entries, {chain.device_id: chain.key.public_bytes},
                          CATALOGUE.get, key)  # type: ignore[arg-type]
            jobs.append(_Job(await relay.hubs.get(store), batch,
                             asyncio.get_running_loop().create_future()))
        for job in jobs:  # both queued before the writer runs: one group commit
            relay._jobs.put_nowait(job)
        relay._writer = asyncio.create_task(relay._write_loop())
        honest = await asyncio.wait_for(jobs[1].done, 30)
        assert [r["status"] for r in honest.receipts] == ["accepted", "accepted"]
        assert honest.heads == {chains[1].device_id: 2}
        with pytest.raises(RuntimeError, match="cannot sign"):
            await asyncio.wait_for(jobs[0].done, 30)
        assert await relay.storage.heads(stores[0]) == {}  # nothing of it was stored
    finally:
        await relay.close()


def test_a_batch_whose_transaction_fails_does_not_fail_the_others_of_its_group(
        tmp_path: Path) -> None:
    asyncio.run(grouped_with_a_failing_batch(tmp_path / "relay.db"))


async def stored_undecided(path: Path) -> None:
    storage = await SQLiteStorage.open(path)
    try:
        store, chain, shift = await selling(storage, 1)
        async with storage.transaction() as txn:
            batch = Batch(store, chain.entries, {chain.device_id: chain.key.public_bytes},
                          CATALOGUE.get, KEY)
            result = (await ingest_all(txn, [batch], now(), decide=False))[0]
        assert codes(result) == [("rejected", "undecidable")] * 2
        assert result.heads == {chain.device_id: 2}  # stored: the chain goes on
        assert (await read(storage, store))["invoices"] == []
        chain.next("sale", sale(("bread", 1, 320), shift_client_id=shift.client_id))
        later = await push(storage, store, chain)
        assert codes(later) == [("waiting", None)]  # its shift counts for nothing
    finally:
        await storage.close()


def test_the_last_resort_stores_a_batch_with_every_new_entry_rejected(tmp_path: Path) -> None:
    asyncio.run(stored_undecided(tmp_path / "relay.db"))

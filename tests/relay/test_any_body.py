"""Any validly signed entry whose body a schema accepts is decided, never an internal error.

Bodies are drawn from the schema files (``tests.schemas.strategies``), extremes first:
the bounds of the integer range, the longest quantities, every kind.  Each one is
decided by ``relay.ingest`` in this process on real SQLite storage (fast enough for many
examples): it gets an ``accepted``, ``waiting`` or ``rejected`` receipt (the only
rejections a valid body may get are ``out_of_range`` and the entry rules beyond the
schemas, ``negative_line``, ``shift_closed`` and ``foreign_shift``), another till of the store keeps
selling afterwards, and every report runs.  One test does the same against a running
relay.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.doubles import sale
from tests.relay.processes import Chain, RawSession, RelayProcess, now, run_cli
from tests.relay.test_bad_input import enrolled
from tests.relay.test_postgres_storage import enrolled as enroll_in  # any storage
from tests.schemas.strategies import bodies
from tillsync.peer.identity import DeviceKey
from tillsync.peer.log import Entry
from tillsync.relay import reports
from tillsync.relay.ingest import Batch, IngestResult, ingest_all
from tillsync.relay.storage.sqlite import SQLiteStorage
from tillsync.schemas import ENTRY_KINDS

SHIFT = "0b8f4c1e-2d3a-4f5b-9c6d-7e8f9a0b1c2d"  # device A's shift: bodies often name it
HELD = "5d2c9a4e-8f1b-4c3d-a2e5-6b7c8d9e0f1a"
PRODUCTS: dict[str, dict[str, Any]] = {
    "bread": {"name": "Bread", "sku": "B1", "price": 320, "reorder_level": "5"},
    "veg": {"name": "Veg", "sku": "V1", "price": 100, "volatile": True},
    "cheese": {"name": "Cheese", "sku": "C1", "price": 999, "reorder_level": "999999999"},
}
RELAY_KEY = DeviceKey.generate()

drawn_entries = st.lists(
    st.sampled_from(ENTRY_KINDS).flatmap(
        lambda kind: st.tuples(st.just(kind), bodies(kind, ids=list(PRODUCTS),
                                                     uuids=[SHIFT, HELD]))),
    min_size=1, max_size=4)


async def decide(storage: SQLiteStorage, store: str, chains: list[Chain],
                 entries: list[Entry]) -> IngestResult:
    async with storage.transaction() as txn:
        keys = {c.device_id: c.key.public_bytes for c in chains}
        batch = Batch(store, entries, keys, PRODUCTS.get, RELAY_KEY)
        return (await ingest_all(txn, [batch], now()))[0]


# What a schema-valid body may still be refused for: decisions, never failures.
DECIDED_REFUSALS = {"out_of_range", "negative_line", "shift_closed", "foreign_shift"}


def check_decided(result: IngestResult, entries: list[Entry]) -> None:
    """Every entry is answered, and a valid body is refused only by a rule."""
    answered = {r["client_id"]: r for r in result.receipts}
    assert set(answered) == {e.client_id for e in entries}
    for receipt in answered.values():
        assert receipt["status"] in ("accepted", "waiting", "rejected"), receipt
        if receipt["status"] == "rejected":
            assert receipt["error"]["code"] in DECIDED_REFUSALS, receipt


async def every_report(storage: SQLiteStorage, store: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for period in reports.PERIODS:
        out[period] = await reports.sales_by_period(storage, store, period)
    out["product"] = await reports.sales_by_product(storage, store)
    out["till"] = await reports.sales_by_till(storage, store)
    out["cashier"] = await reports.sales_by_cashier(storage, store)
    out["invoices"] = await reports.invoice_register(storage, store)
    out["stock"] = await reports.stock(storage, store)
    out["alerts"] = await reports.alerts(storage, store)
    out["devices"] = await reports.devices(storage, store)
    out["shifts"] = await reports.shifts(storage, store)
    return out


async def scenario(path: Path, drawn: list[tuple[str, dict[str, Any]]]) -> None:
    storage = await SQLiteStorage.open(path)
    try:
        store = f"store-{uuid.uuid4().hex[:8]}"
        a, b = (await enroll_in(storage, store),  # type: ignore[arg-type]
                await enroll_in(storage, store))  # type: ignore[arg-type]
        a.next("shift_open", {"cashier_id": "ann", "opening_cash": 0}, client_id=SHIFT)
        a.next("held_sale", {"lines": [{"product_id": "bread", "qty": 1, "unit_price": 1}]},
               client_id=HELD)
        for kind, body in drawn:
            a.next(kind, body)
        check_decided(await decide(storage, store, [a, b], a.entries), a.entries)

        # Another till of the store keeps selling, and is counted.
        shift = b.next("shift_open", {"cashier_id": "bob", "opening_cash": 0})
        b.next("sale", sale(("bread", 1, 320), shift_client_id=shift.client_id))
        result = await decide(storage, store, [a, b], b.entries)
        assert [r["status"] for r in result.receipts] == ["accepted", "accepted"]
        found = await every_report(storage, store)
        register = found["invoices"]
        assert sum(1 for i in register["invoices"] if i["device_id"] == b.device_id) == 1
        assert [s["missing"] for s in register["series"]] == [[]]
        assert register["count"] == len(register["invoices"])
        assert register["total"] == sum(i["total"] for i in register["invoices"])
    finally:
        await storage.close()


@pytest.fixture(scope="module")
def relay_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("any-body") / "relay.db"


@given(drawn=drawn_entries)
def test_any_schema_valid_entry_is_decided_and_the_store_goes_on(
        relay_file: Path, drawn: list[tuple[str, dict[str, Any]]]) -> None:
    asyncio.run(scenario(relay_file, drawn))


# -- against a running relay ----------------------------------------------------------



async def pushed(relay: RelayProcess, drawn: list[tuple[str, dict[str, Any]]]) -> str:
    store = f"store-{uuid.uuid4().hex[:8]}"
    a, b = await enrolled(relay, store), await enrolled(relay, store)
    a.next("shift_open", {"cashier_id": "ann", "opening_cash": 0}, client_id=SHIFT)
    for kind, body in drawn:
        a.next(kind, body)
    session = await RawSession.open(relay.url, store, a.device_id, a.key)
    try:
        assert (await session.push(a.entries)).heads == {a.device_id: len(a.entries)}
        receipts = await session.receipts_until(len(a.entries))
        for receipt in receipts:
            assert receipt["status"] != "rejected" or \
                receipt["error"]["code"] in DECIDED_REFUSALS, receipt
    finally:
        await session.close()
    shift = b.next("shift_open", {"cashier_id": "bob", "opening_cash": 0})
    b.next("sale", sale(("bread", 1, 320), shift_client_id=shift.client_id))
    session = await RawSession.open(relay.url, store, b.device_id, b.key)
    try:
        await session.push(b.entries)
        mine = [r for r in await session.receipts_until(len(a.entries) + 2)
                if r["device_id"] == b.device_id]
        assert [r["status"] for r in mine] == ["accepted", "accepted"]
    finally:
        await session.close()
    return store


@settings(max_examples=max(3, settings.default.max_examples // 10))
@given(drawn=drawn_entries)
def test_a_running_relay_decides_any_schema_valid_entry(
        relay: RelayProcess, drawn: list[tuple[str, dict[str, Any]]]) -> None:
    store = asyncio.run(pushed(relay, drawn))
    where = ["--db", relay.db] if relay.db else ["--data", str(relay.data)]
    for report in (["sales"], ["sales", "--by", "product"], ["invoices"], ["shifts"],
                   ["stock"], ["devices"]):
        run_cli("report", *report, *where, "--store", store)

"""Customers' balances on a relay that held account sales before it kept balances: the
schema migration (SQLite schema 9, PostgreSQL migration 9) sets them from the entries
held, counting only what the relay accepted, and the credit report follows.  On both
backends."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from tests.doubles import sale
from tests.relay.processes import RawSession, RelayProcess, TillDir, cli_json, query, run_cli
from tests.relay.test_bad_input import enrolled
from tillsync.relay.storage.postgres import SCHEMA_VERSION as PG_SCHEMA_VERSION
from tillsync.relay.storage.sqlite import SCHEMA_VERSION as SQLITE_SCHEMA_VERSION


def _on_account(customer: str, amount: int, shift: str) -> dict[str, Any]:
    return {**sale(("bread", 1, amount), shift_client_id=shift), "customer_id": customer,
            "payments": [{"method": "account", "amount": amount}]}


def _balances(relay: RelayProcess, store: str) -> dict[str, int]:
    return {str(name): int(value) for name, value in query(
        relay, "SELECT name, value FROM counters WHERE store = ? AND name LIKE 'balance:%'",
        (store,))}


async def test_the_migration_sets_balances_from_the_accepted_entries(
        tmp_path: Path, relay: RelayProcess) -> None:
    store = f"store-{uuid.uuid4().hex[:8]}"
    office = TillDir(tmp_path / "office", "Office")
    office.init(relay, store)
    office.put_many([("products", "bread", {"name": "Bread", "sku": "B1", "price": 320}),
                     ("customers", "bob", {"name": "Bob", "credit_limit": 50000}),
                     ("customers", "eve", {"name": "Eve", "credit_limit": 1000})])
    office.sync_json()

    chain = await enrolled(relay, store)
    shift = chain.next("shift_open", {"cashier_id": "ann", "opening_cash": 0}).client_id
    chain.next("sale", _on_account("bob", 60000, shift))
    chain.next("sale", _on_account("eve", 500, shift))
    chain.next("customer_payment", {"customer_id": "eve", "amount": 200, "method": "cash",
                                    "shift_client_id": shift})
    chain.next("refund", {"original_sale_client_id": chain.entries[1].client_id,
                          "method": "account", "customer_id": "bob", "amount": 1000,
                          "reason": "stale", "lines": [{"product_id": "bread", "qty": 1,
                                                        "unit_price": 1000}]})
    # Counted for nothing: a sale waiting for a shift that never came, and one rejected
    # for naming a shift closed already.
    chain.next("sale", _on_account("eve", 700, str(uuid.uuid4())))
    chain.next("shift_close", {"open_shift_client_id": shift, "closing_cash": 0})
    chain.next("sale", _on_account("bob", 4000, shift))
    session = await RawSession.open(relay.url, store, chain.device_id, chain.key)
    try:
        await session.push(chain.entries)
        receipts = await session.receipts_until(len(chain.entries))
    finally:
        await session.close()
    assert [r["status"] for r in receipts] == ["accepted"] * 5 + ["waiting", "accepted",
                                                                  "rejected"]
    expected = {"balance:bob": 60000 - 1000, "balance:eve": 500 - 200}
    assert _balances(relay, store) == expected
    where = ["--db", relay.db] if relay.db else ["--data", str(relay.data)]
    report = cli_json("report", "credit", *where, "--store", store)
    assert report == [{"customer_id": "bob", "name": "Bob", "balance": 59000,
                       "credit_limit": 50000, "over_by": 9000}]

    # The database as a relay of the schema before kept it: no balance of bob, and one
    # of eve that counts only part of her entries (kept since some later upgrade).
    relay.kill()
    try:
        query(relay, "DELETE FROM counters WHERE store = ? AND name LIKE 'balance:%'",
              (store,))
        query(relay, "INSERT INTO counters (store, name, value) VALUES (?, 'balance:eve', "
                     "1500)", (store,))
        query(relay, "DELETE FROM schema_version WHERE version >= 9" if relay.db else
              "UPDATE meta SET value = '8' WHERE key = 'schema_version'")
        version = PG_SCHEMA_VERSION if relay.db else SQLITE_SCHEMA_VERSION
        assert version >= 9  # the balances' migration and any after it run
        assert f"schema at version {version}" in run_cli("relay", "migrate", *where).stdout
        assert _balances(relay, store) == expected
        assert cli_json("report", "credit", *where, "--store", store) == report
    finally:
        relay.start()
    # Ingest goes on from the migrated balances: eve's next sale on account crosses her
    # limit of 1000 at 300 + 800.
    chain.entries.clear()
    again = chain.next("shift_open", {"cashier_id": "ann", "opening_cash": 0}).client_id
    chain.next("sale", _on_account("eve", 800, again))
    session = await RawSession.open(relay.url, store, chain.device_id, chain.key,
                                    receipts_after=len(receipts))
    try:
        await session.push(chain.entries)
        later = await session.receipts_until(len(receipts) + 2)
    finally:
        await session.close()
    assert later[-1]["warnings"] == [{"code": "credit_limit", "customer_id": "eve",
                                      "balance": 1100, "credit_limit": 1000}]

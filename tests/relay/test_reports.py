"""``tillsync report``: numbers made through the real path (tills record, sync to a real
relay process, on SQLite and on PostgreSQL) checked against sums the test computes
itself from the sale bodies it recorded."""

from __future__ import annotations

import asyncio
import csv
import io
import uuid
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.doubles import sale
from tests.relay.databases import REJECTED_BEFORE_SCHEMA_7, invoices_before_schema_6
from tests.relay.processes import (
    Chain,
    RawSession,
    RelayProcess,
    Relays,
    TillDir,
    cli_json,
    enroll_code,
    in_thread,
    query,
    run_cli,
)
from tests.relay.test_report_api import get
from tillsync.peer.client import enroll
from tillsync.peer.identity import DeviceKey
from tillsync.relay.storage.postgres import SCHEMA_VERSION as PG_SCHEMA_VERSION
from tillsync.relay.storage.sqlite import SCHEMA_VERSION as SQLITE_SCHEMA_VERSION

STORE = "store-r"
PRODUCTS = {
    "bread": {"name": "Bread", "sku": "B1", "price": 320, "reorder_level": "5"},
    "tomato": {"name": "Tomatoes", "sku": "T1", "price": 450, "volatile": True, "unit": "kg"},
    "cheese": {"name": "Cheese", "sku": "C1", "price": 1890, "unit": "kg", "reorder_level": "1"},
}
SALES_A = [(("bread", 2, 320),), (("tomato", "0.333", 479), ("bread", 1, 320)),
           (("cheese", "0.5", 1890),), (("tomato", "1.25", 450),)]
OPENING = {"Till A": 5000, "Till B": 2000}
CASHIER = {"Till A": "ann", "Till B": "bob"}
SALES_B = [(("bread", 3, 300),), (("cheese", "0.275", 1890), ("tomato", "0.5", 479))]


@pytest.fixture
def relays(tmp_path: Path, relay_db: str | None) -> Iterator[Relays]:
    with Relays(tmp_path, relay_db) as started:
        yield started


def where(relay: RelayProcess) -> list[str]:
    return ["--db", relay.db] if relay.db else ["--data", str(relay.data)]


def amount(qty: int | str, price: int) -> int:
    """Half up to a whole minor unit: the rule of `peer/totals.py`, written out again here."""
    return int((Decimal(str(qty)) * price).quantize(Decimal(1), rounding=ROUND_HALF_UP))


@pytest.mark.slow
def test_sales_and_invoice_reports_match_the_sales_recorded(tmp_path: Path,
                                                           relays: Relays) -> None:
    relay = relays.start()
    a, b = TillDir(tmp_path / "a", "Till A"), TillDir(tmp_path / "b", "Till B")
    a.init(relay, STORE)
    b.init(relay, STORE)
    a.put_many([("products", p, body) for p, body in PRODUCTS.items()]
               + [("cashiers", c, {"name": c.title(), "role": "cashier", "pin": "1234"})
                  for c in ("ann", "bob")])
    a.sync()
    b.sync()
    a.record("stock_move", {"product_id": "bread", "direction": "in", "qty": 8,
                            "reason": "delivery"})
    tickets, shifts = [], {}
    for till, sales in ((a, SALES_A), (b, SALES_B)):
        shift = till.record("shift_open", {"cashier_id": CASHIER[till.name],
                                           "opening_cash": OPENING[till.name]})["client_id"]
        shifts[till.name] = shift
        for lines in sales:
            tickets.append(till.record("sale", sale(*lines, shift_client_id=shift))["ticket"])
        if till is a:
            a.record("cash_movement", {"direction": "out", "amount": 1000, "reason": "bank",
                                       "shift_client_id": shift})
            a.record("shift_close", {"open_shift_client_id": shift, "closing_cash": 4000,
                                     "variance_reason": "short"})
        assert till.sync_json()["pending"] == 0
    today = datetime.now(UTC).date().isoformat()

    # Independent sums from what was recorded.
    qty: dict[str, Decimal] = defaultdict(Decimal)
    revenue: dict[str, int] = defaultdict(int)
    for lines in SALES_A + SALES_B:
        for product, q, price in lines:
            qty[product] += Decimal(str(q))
            revenue[product] += amount(q, price)
    totals = {"Till A": sum(amount(q, p) for lines in SALES_A for _, q, p in lines),
              "Till B": sum(amount(q, p) for lines in SALES_B for _, q, p in lines)}

    by_product = cli_json("report", "sales", *where(relay), "--store", STORE,
                          "--by", "product")
    assert {r["product_id"]: (Decimal(r["qty"]), r["revenue"]) for r in by_product} == \
        {p: (qty[p], revenue[p]) for p in qty}
    assert cli_json("report", "sales", *where(relay), "--store", STORE, "--by", "product",
                    "--product", "cheese") == [r for r in by_product
                                               if r["product_id"] == "cheese"]
    tomato = next(r for r in by_product if r["product_id"] == "tomato")
    assert tomato["avg_unit_price"] == round(revenue["tomato"] / qty["tomato"])
    assert [r["revenue"] for r in by_product] == sorted(revenue.values(), reverse=True)

    by_day = cli_json("report", "sales", *where(relay), "--store", STORE, "--from", today,
                      "--to", today)
    no_refunds = {"refund_count": 0, "refunds": 0}
    assert by_day == [{"period": today, "sales": 6, "gross": sum(totals.values()),
                       "revenue": sum(totals.values()), **no_refunds}]
    by_month = cli_json("report", "sales", *where(relay), "--store", STORE, "--period", "month")
    assert by_month == [{"period": today[:7], "sales": 6, "gross": sum(totals.values()),
                         "revenue": sum(totals.values()), **no_refunds}]
    assert cli_json("report", "sales", *where(relay), "--store", STORE, "--to",
                    "2001-01-01") == []

    by_cashier = cli_json("report", "sales", *where(relay), "--store", STORE, "--by",
                          "cashier")
    assert by_cashier == [
        {"cashier_id": "ann", "name": "Ann", "sales": 4, "gross": totals["Till A"],
         "revenue": totals["Till A"], **no_refunds},
        {"cashier_id": "bob", "name": "Bob", "sales": 2, "gross": totals["Till B"],
         "revenue": totals["Till B"], **no_refunds}]
    by_till = cli_json("report", "sales", *where(relay), "--store", STORE, "--by", "till")
    assert {r["name"]: (r["sales"], r["revenue"]) for r in by_till} == {
        "Till A": (4, totals["Till A"]), "Till B": (2, totals["Till B"])}

    register = cli_json("report", "invoices", *where(relay), "--store", STORE)
    assert sorted(i["ticket"] for i in register["invoices"]) == sorted(tickets)
    assert [i["invoice_no"] for i in register["invoices"]] == [1, 2, 3, 4, 5, 6]
    assert [(s["issued"], s["highest"], s["missing"]) for s in register["series"]] == \
        [(6, 6, [])]
    one = cli_json("report", "invoices", *where(relay), "--store", STORE, "--ticket",
                   tickets[0])
    assert one[0]["ticket"] == tickets[0] and one[0]["invoice_no"] in range(1, 7)

    table = run_cli("report", "invoices", *where(relay), "--store", STORE).stdout
    assert "6 issued, 1..6, no gap" in table
    rows = list(csv.DictReader(io.StringIO(run_cli(
        "report", "sales", *where(relay), "--store", STORE, "--by", "till", "--csv").stdout)))
    assert {r["name"]: int(r["revenue"]) for r in rows} == totals

    # Stock: 8 loaves in, 6 sold; cheese only sold (negative is allowed); tomatoes are
    # volatile (not tracked). Cheese's first movement left it below its level 1: an alert
    # (at Till A's sync); bread fell below its level 5 once (5 -> 2, at Till B's).
    sold = {p: sum(Decimal(str(q)) for lines in SALES_A + SALES_B for pp, q, _ in lines
                   if pp == p) for p in PRODUCTS}
    stock = {r["product_id"]: r for r in cli_json("report", "stock", *where(relay),
                                                  "--store", STORE)}
    assert Decimal(stock["bread"]["qty"]) == 8 - sold["bread"] == 2
    assert stock["bread"]["low"] is True and stock["bread"]["reorder_level"] == "5"
    assert Decimal(stock["cheese"]["qty"]) == -sold["cheese"]
    assert stock["tomato"]["volatile"] is True and "qty" not in stock["tomato"]
    alerts = cli_json("report", "alerts", *where(relay), "--store", STORE)
    assert [(x["product_id"], x["qty"], x["reorder_level"]) for x in alerts] == \
        [("cheese", "-0.5", "1"), ("bread", "2", "5")]

    devices = {d["name"]: d for d in cli_json("report", "devices", *where(relay),
                                              "--store", STORE)}
    assert {n: (d["entries"], d["highest_seq"], d["rejected"], d["waiting"])
            for n, d in devices.items()} == {"Till A": (8, 8, 0, 0), "Till B": (3, 3, 0, 0)}
    # How late each till's latest entry reached the relay: made, then synced, in this test.
    assert all(0 <= d["lag_s"] < 120 for d in devices.values()), devices

    # Z reports: the cash each sale paid (doubles.sale pays the sum of qty x price,
    # truncated), opening cash, cash out; Till A's shift closed 4000 counted.
    paid = {name: sum(int(sum(Decimal(str(q)) * p for _, q, p in lines)) for lines in sales)
            for name, sales in (("Till A", SALES_A), ("Till B", SALES_B))}
    z = {r["till"]: r for r in cli_json("report", "shifts", *where(relay), "--store", STORE)}
    expected_a = OPENING["Till A"] + paid["Till A"] - 1000
    assert {k: z["Till A"][k] for k in ("shift", "opening_cash", "cash_sales", "cash_out",
                                         "expected_cash", "counted_cash", "variance",
                                         "variance_reason")} == {
        "shift": shifts["Till A"], "opening_cash": 5000, "cash_sales": paid["Till A"],
        "cash_out": -1000, "expected_cash": expected_a, "counted_cash": 4000,
        "variance": 4000 - expected_a, "variance_reason": "short"}
    assert z["Till A"]["server_id"] and z["Till A"]["closed_at"]
    assert z["Till B"]["expected_cash"] == OPENING["Till B"] + paid["Till B"]
    assert z["Till B"]["closed_at"] is None and z["Till B"]["variance"] is None
    assert all(d["last_seen"] and not d["revoked_at"] for d in devices.values())

    # A relay database from before the running totals (schema 3 on SQLite, migration 3
    # on PostgreSQL) holding these sales: upgrading fills the totals from the raw rows,
    # and every report reads the same as the totals ingest kept.  (The store keys of
    # schema 5 stay: the store was made with its own key, which its tills pinned.)
    every = [("sales", "--by", by) for by in ("period", "product", "till", "cashier")] + [
        ("invoices",), ("shifts",), ("stock",), ("alerts",), ("devices",)]
    before = [cli_json("report", r[0], *where(relay), "--store", STORE, *r[1:])
              for r in every]
    relay.kill()
    for sql in ("DROP TABLE tally_refunds", "DROP TABLE tally_product_refunds",
                "DROP TABLE tally_expenses", "DROP TABLE tally_cash_moves",
                "DROP TABLE report_items",
                "DROP TABLE tally_sales", "DROP TABLE tally_products",
                "DROP TABLE tally_shifts", "DROP TABLE tally_cash", "DROP TABLE tally_series",
                "DROP INDEX invoices_by_time", "ALTER TABLE prices DROP COLUMN at",
                *(["DROP TRIGGER invoices_append_only ON invoices"] if relay.db else
                  ["DROP TRIGGER invoices_append_only_update",
                   "DROP TRIGGER invoices_append_only_delete"]),
                *invoices_before_schema_6(bool(relay.db)),
                REJECTED_BEFORE_SCHEMA_7,
                "DELETE FROM schema_version WHERE version >= 4" if relay.db else
                "UPDATE meta SET value = '3' WHERE key = 'schema_version'"):
        query(relay, sql)
    migrated = run_cli("relay", "migrate", *where(relay)).stdout
    version = PG_SCHEMA_VERSION if relay.db else SQLITE_SCHEMA_VERSION
    assert f"schema at version {version}" in migrated, migrated
    # Schema 6 gave each invoice its sale's place in the chain.
    assert query(relay, "SELECT count(*) FROM invoices i JOIN entries e ON e.store = i.store "
                 "AND e.client_id = i.client_id AND e.device_id = i.device_id AND e.seq = i.seq "
                 "WHERE i.store = ?", (STORE,)) == query(
        relay, "SELECT count(*) FROM invoices WHERE store = ?", (STORE,))
    after = [cli_json("report", r[0], *where(relay), "--store", STORE, *r[1:])
             for r in every]
    assert after == before

    # The register is append-only, in the database itself.
    for sql in ("DELETE FROM invoices WHERE store = ? AND invoice_no = 3",
                "UPDATE invoices SET total = 0 WHERE store = ?"):
        with pytest.raises(Exception, match="append-only"):
            query(relay, sql, (STORE,))
    # And a sale is numbered once, in the database itself: a second number for the same
    # place in a chain (what the UNIQUE (store, device_id, seq) of schema 6 stops).
    with pytest.raises(Exception, match="(?i)unique"):
        query(relay, "INSERT INTO invoices (store, series, invoice_no, client_id, device_id, "
              "ticket, total, client_created_at, issued_at, seq) SELECT store, series, "
              "invoice_no + 1000, client_id, device_id, ticket, total, client_created_at, "
              "issued_at, seq FROM invoices WHERE store = ? AND invoice_no = 3", (STORE,))
    # The gap check finds a number skipped: a counter that jumps (the bug it guards
    # against) leaves the next sale's number one too high.
    query(relay, "UPDATE counters SET value = value + 1 WHERE store = ? AND name = ?",
          (STORE, "invoice:INV"))
    relay.start()
    b.record("sale", sale(("bread", 1, 320), shift_client_id=shifts["Till B"]))
    assert b.sync_json()["pending"] == 0
    table = run_cli("report", "invoices", *where(relay), "--store", STORE).stdout
    assert "7 issued, 1..8, MISSING [7]" in table, table


@pytest.mark.slow
def test_reports_refuse_bad_dates_unknown_stores_and_a_missing_database(
        tmp_path: Path, relays: Relays) -> None:
    relay = relays.start()
    TillDir(tmp_path / "a", "Till A").init(relay, STORE)
    for args, message in (
            (("sales", "--store", STORE, "--from", "2026-13-01"), "is not a date"),
            (("sales", "--store", STORE, "--from", "2026-02-02", "--to", "2026-02-01"),
             "is after"),
            (("sales", "--store", "nowhere"), "no store 'nowhere'"),
            (("invoices", "--store", STORE, "--ticket", "NOPE-1"), "has no invoice number"),
            (("sales", "--store", STORE, "--by", "product", "--product", "caviar"),
             "no product 'caviar'"),
            (("sales", "--store", STORE, "--product", "bread"), "goes with --by product")):
        done = run_cli("report", *args[:1], *where(relay), *args[1:], check=False)
        assert done.returncode == 2, done.stderr
        assert message in done.stderr, done.stderr
    done = run_cli("report", "sales", "--data", str(tmp_path / "empty"), "--store", STORE,
                   check=False)
    assert done.returncode == 2 and "no relay database" in done.stderr
    assert not (tmp_path / "empty").exists()  # a report never creates a database


@pytest.mark.slow
def test_the_waiting_list_shows_entries_until_what_they_wait_for_arrives(
        tmp_path: Path, relays: Relays) -> None:
    """Till B (played by hand, as are all devices here) resumes a held sale of Till A's and
    records a cash movement in Till A's shift before Till A has synced either: both wait,
    and the waiting list shows each with what it waits for, on the CLI and the API, until
    Till A's entries arrive."""
    relay = relays.start()
    store = "store-waiting"

    async def device(name: str) -> Chain:
        key, device_id = DeviceKey.generate(), str(uuid.uuid4())
        await enroll(relay.url, enroll_code(relay, store, name), name, key, device_id)
        return Chain(key, device_id)

    def report() -> Any:
        return cli_json("report", "waiting", *where(relay), "--store", store)

    async def push(chain: Chain) -> None:
        session = await RawSession.open(relay.url, store, chain.device_id, chain.key)
        try:
            assert (await session.push(chain.entries)).heads == {chain.device_id: chain.seq}
        finally:
            await session.close()

    async def run() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        a, b = await device("Till A"), await device("Till B")
        shift_a = a.next("shift_open", {"cashier_id": "ann", "opening_cash": 1000})
        held = a.next("held_sale", {"lines": [{"product_id": "bread", "qty": 2,
                                               "unit_price": 320}],
                                    "shift_client_id": shift_a.client_id})
        shift_b = b.next("shift_open", {"cashier_id": "bob", "opening_cash": 500})
        resumed = b.next("sale", sale(("bread", 2, 320), shift_client_id=shift_b.client_id,
                                      held_transaction_client_id=held.client_id))
        moved = b.next("cash_movement", {"direction": "in", "amount": 500, "reason": "float",
                                         "shift_client_id": shift_a.client_id})
        await push(b)
        waiting = report()
        token = cli_json("relay", "token", "--data", str(relay.data),
                         *(["--db", relay.db] if relay.db else []), "--store", store)["token"]
        assert await asyncio.to_thread(get, relay, f"/api/v1/stores/{store}/reports/waiting",
                                       token) == (200, waiting)
        received = dict(query(relay, "SELECT client_id, received_at FROM entries WHERE "
                                     "store = ?", (store,)))
        assert waiting == [
            {"at": e.client_created_at, "kind": e.kind, "client_id": e.client_id,
             "device_id": b.device_id, "till": "Till B", "seq": e.seq, "ticket": e.ticket,
             "waiting_for": dependency, "received_at": received[e.client_id]}
            for e, dependency in sorted([(resumed, held.client_id),
                                         (moved, shift_a.client_id)],
                                        key=lambda x: (x[0].client_created_at,
                                                       x[0].client_id))]
        await push(a)  # what they wait for arrives: both are decided, none waits
        return waiting, report()

    waiting, after = in_thread(run)
    assert len(waiting) == 2
    assert after == []
    assert query(relay, "SELECT count(*) FROM waiting WHERE store = ?", (store,)) == [(0,)]

"""The reports of refunds, expenses, cash movements, product analytics per period and the
lists (total mismatches, held sales, drafts, waiting entries), made through the real path
(a till records over several days, syncs to a real relay process on SQLite and on
PostgreSQL) and checked against sums this test computes itself from the bodies it
recorded; the same numbers over the HTTP API; and again after the running totals are
rebuilt from the entries by the schema migration."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.relay.processes import RelayProcess, TillDir, cli_json, in_thread, query, run_cli
from tests.relay.test_report_api import get
from tillsync.peer.store import Till
from tillsync.relay.storage.postgres import SCHEMA_VERSION as PG_SCHEMA_VERSION
from tillsync.relay.storage.sqlite import SCHEMA_VERSION as SQLITE_SCHEMA_VERSION

STORE = "store-money"
PRODUCTS = {"bread": {"name": "Bread", "sku": "B1", "price": 320},
            "cheese": {"name": "Cheese", "sku": "C1", "price": 1890, "unit": "kg"}}
# Monday 2 March, Tuesday 3 March (same ISO week 10), Tuesday 10 March (week 11), and
# Wednesday 1 April (another month).
DAYS = ["2026-03-02", "2026-03-03", "2026-03-10", "2026-04-01"]


def amount(qty: int | str, price: int) -> int:
    return int((Decimal(str(qty)) * price).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def week(day: str) -> str:
    year, number, _ = date.fromisoformat(day).isocalendar()
    return f"{year}-W{number:02d}"


PERIOD: dict[str, Callable[[str], str]] = {"day": lambda d: d, "week": week,
                                           "month": lambda d: d[:7]}


def where(relay: RelayProcess) -> list[str]:
    return ["--db", relay.db] if relay.db else ["--data", str(relay.data)]


def record_on(till: TillDir, entries: list[tuple[str, str, dict[str, Any]]]
              ) -> list[dict[str, Any]]:
    """Record (day, kind, body) entries with the till's clock at noon of each day."""
    async def go() -> list[dict[str, Any]]:
        out = []
        for day, kind, body in entries:
            moment = datetime.fromisoformat(f"{day}T12:00:00+00:00")
            async with await Till.open(till.path, wait=10.0,
                                       clock=lambda m=moment: m.astimezone(UTC)) as opened:
                out.append((await opened.record(kind, body)).to_json())
        return out
    return in_thread(go)


def line(product: str, qty: int | str, price: int) -> dict[str, Any]:
    return {"product_id": product, "qty": qty, "unit_price": price}


@pytest.mark.slow
def test_every_report_equals_an_independent_sum_of_what_was_recorded(
        tmp_path: Path, relay: RelayProcess) -> None:
    till = TillDir(tmp_path / "till", "Till M")
    till.init(relay, STORE)
    till.put_many([("products", p, body) for p, body in PRODUCTS.items()]
                  + [("cashiers", "ann", {"name": "Ann", "role": "cashier", "pin": "1234"}),
                     ("suppliers", "mill", {"name": "The Mill"}),
                     ("settings", "store", {"store_name": "Money Shop", "currency": "EUR"})])
    shift = record_on(till, [(DAYS[0], "shift_open", {"cashier_id": "ann",
                                                       "opening_cash": 1000})])[0]["client_id"]

    def sale(*lines: dict[str, Any], **extra: Any) -> dict[str, Any]:
        total = sum(amount(x["qty"], x["unit_price"]) for x in lines)
        return {"lines": list(lines), "payments": [{"method": "cash", "amount": total}],
                "shift_client_id": shift, **extra}

    sales = [(DAYS[0], [line("bread", 2, 320), line("cheese", "0.5", 1890)]),
             (DAYS[1], [line("bread", 1, 300)]),
             (DAYS[2], [line("cheese", "0.275", 1890)]),
             (DAYS[3], [line("bread", 5, 320), line("cheese", "1.125", 1800)])]
    done = record_on(till, [(day, "sale", sale(*lines)) for day, lines in sales])
    # A sale whose client total is wrong: numbered with the relay's total, listed.
    wrong = record_on(till, [(DAYS[1], "sale", sale(line("bread", 3, 320),
                                                    client_total=999))])[0]
    sales.append((DAYS[1], [line("bread", 3, 320)]))
    held = record_on(till, [(DAYS[1], "held_sale", {"lines": [line("bread", 4, 320)],
                                                    "shift_client_id": shift, "note": "later"}),
                            (DAYS[2], "held_sale", {"lines": [line("cheese", "2", 1890)],
                                                    "shift_client_id": shift})])
    resumer = record_on(till, [(DAYS[2], "sale", sale(
        line("bread", 4, 320), held_transaction_client_id=held[0]["client_id"]))])[0]
    sales.append((DAYS[2], [line("bread", 4, 320)]))
    refunds = [(DAYS[2], {"original_sale_client_id": done[0]["client_id"],
                          "lines": [line("bread", 1, 320)], "method": "cash", "amount": 320,
                          "shift_client_id": shift, "reason": "stale"}),
               (DAYS[3], {"original_sale_client_id": done[3]["client_id"],
                          "lines": [line("cheese", "0.125", 1800), line("bread", 2, 320)],
                          "method": "card", "amount": 865, "reason": "wrong cut"})]
    expenses = [(DAYS[1], {"amount": 450, "category": "cleaning", "description": "soap",
                           "method": "cash", "shift_client_id": shift}),
                (DAYS[1], {"amount": 1200, "category": "cleaning", "description": "mops",
                           "method": "card"}),
                (DAYS[3], {"amount": 90000, "category": "rent", "description": "April",
                           "method": "card"})]
    moves = [(DAYS[0], {"direction": "in", "amount": 5000, "reason": "float",
                        "shift_client_id": shift}),
             (DAYS[2], {"direction": "out", "amount": 2000, "reason": "bank",
                        "shift_client_id": shift}),
             (DAYS[2], {"direction": "out", "amount": 700, "reason": "bank",
                        "shift_client_id": shift})]
    drafts = record_on(till, [
        *((d, "refund", b) for d, b in refunds), *((d, "expense", b) for d, b in expenses),
        *((d, "cash_movement", b) for d, b in moves),
        (DAYS[3], "purchase_order", {"supplier_id": "mill", "lines": [
            {"product_id": "bread", "qty": 40, "unit_cost": 150},
            {"product_id": "cheese", "qty": "2.5", "unit_cost": 1201}]}),
        (DAYS[3], "journal_entry", {"memo": "accrual", "lines": [
            {"account": "rent", "debit": 90000, "credit": 0},
            {"account": "bank", "debit": 0, "credit": 90000}]})])[-2:]
    assert till.sync_json()["pending"] == 0
    receipts = {r["client_id"]: r for r in till.receipts()}

    # Independent sums, per day, from the bodies above.
    gross: dict[str, int] = defaultdict(int)
    count: dict[str, int] = defaultdict(int)
    product_day: dict[tuple[str, str], list[Any]] = defaultdict(
        lambda: [Decimal(0), 0, 0, Decimal(0), 0])  # qty, gross, sales, refunded qty, refunds
    for day, lines in sales:
        count[day] += 1
        for x in lines:
            figures = amount(x["qty"], x["unit_price"])
            gross[day] += figures
            product_day[(day, x["product_id"])][0] += Decimal(str(x["qty"]))
            product_day[(day, x["product_id"])][1] += figures
        for p in {x["product_id"] for x in lines}:
            product_day[(day, p)][2] += 1
    refunded: dict[str, int] = defaultdict(int)
    for day, body in refunds:
        refunded[day] += body["amount"]
        for x in body["lines"]:
            product_day[(day, x["product_id"])][3] += Decimal(str(x["qty"]))
            product_day[(day, x["product_id"])][4] += amount(x["qty"], x["unit_price"])

    def report(*args: str) -> Any:
        return cli_json("report", args[0], *where(relay), "--store", STORE, *args[1:])

    for period, key in PERIOD.items():
        want: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
        for day in DAYS:
            bucket = want[key(day)]
            bucket[0] += count[day]
            bucket[1] += gross[day]
            bucket[2] += sum(1 for d, _ in refunds if d == day)
            bucket[3] += refunded[day]
        assert report("sales", "--period", period) == [
            {"period": k, "sales": n, "gross": g, "refund_count": rn, "refunds": r,
             "revenue": g - r} for k, (n, g, rn, r) in sorted(want.items())]

        by_product: dict[tuple[str, str], list[Any]] = defaultdict(
            lambda: [Decimal(0), 0, 0, Decimal(0), 0])
        for (day, p), figures in product_day.items():
            for i, value in enumerate(figures):
                by_product[(key(day), p)][i] += value
        rows = report("sales", "--by", "product", "--period", period)
        assert {(r["period"], r["product_id"]): (Decimal(r["qty"]), r["gross"], r["sales"],
                                                Decimal(r["refunded_qty"]), r["refunds"],
                                                r["revenue"], r["avg_unit_price"])
                for r in rows} == {
            k: (q, g, n, rq, rf, g - rf, round(g / q) if q else None)
            for k, (q, g, n, rq, rf) in by_product.items()}
        assert [r["period"] for r in rows] == sorted(r["period"] for r in rows)

        want_refunds: dict[str, list[Any]] = defaultdict(lambda: [0, 0, defaultdict(int)])
        for day, body in refunds:
            bucket = want_refunds[key(day)]
            bucket[0] += 1
            bucket[1] += body["amount"]
            bucket[2][body["method"]] += body["amount"]
        assert report("refunds", "--period", period) == [
            {"period": k, "refunds": n, "amount": a, "by_method": dict(m)}
            for k, (n, a, m) in sorted(want_refunds.items())]

        want_expenses: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
        for day, body in expenses:
            bucket = want_expenses[(key(day), body["category"])]
            bucket[0] += 1
            bucket[1] += body["amount"]
            bucket[2] += body["amount"] if body["method"] == "cash" else 0
        assert report("expenses", "--period", period) == [
            {"period": k, "category": c, "expenses": n, "amount": a, "cash": cash}
            for (k, c), (n, a, cash) in sorted(want_expenses.items())]

        want_cash: dict[str, dict[str, Any]] = {}
        for day, body in moves:
            row = want_cash.setdefault(key(day), {"period": key(day), "moves_in": 0,
                                                  "cash_in": 0, "moves_out": 0, "cash_out": 0,
                                                  "net": 0})
            row[f"moves_{body['direction']}"] += 1
            row[f"cash_{body['direction']}"] += body["amount"]
            row["net"] += body["amount"] * (1 if body["direction"] == "in" else -1)
        assert report("cash", "--period", period) == [want_cash[k] for k in sorted(want_cash)]

    # One product over a range (March only), by week.
    cheese = report("product", "--product", "cheese", "--from", "2026-03-01", "--to",
                    "2026-03-31", "--period", "week")
    march = {k: v for k, v in product_day.items() if k[0] < "2026-04" and k[1] == "cheese"}
    qty = sum((v[0] for v in march.values()), Decimal(0))
    cheese_gross = sum(v[1] for v in march.values())
    assert (cheese["name"], Decimal(cheese["qty"]), cheese["gross"], cheese["revenue"],
            cheese["sales"], cheese["avg_unit_price"]) == (
        "Cheese", qty, cheese_gross, cheese_gross - sum(v[4] for v in march.values()),
        sum(v[2] for v in march.values()), round(cheese_gross / qty))
    assert [(b["period"], Decimal(b["qty"])) for b in cheese["breakdown"]] == [
        ("2026-W10", Decimal("0.5")), ("2026-W11", Decimal("0.275"))]

    # The lists.
    mismatch = report("mismatches")
    register = {i["ticket"]: i["invoice"] for i in report("invoices")["invoices"]}
    assert mismatch == [{
        "at": wrong["client_created_at"], "client_id": wrong["client_id"],
        "device_id": wrong["device_id"], "till": "Till M", "ticket": wrong["ticket"],
        "invoice": register[wrong["ticket"]], "total": 960, "client_total": 999,
        "difference": 39}]
    assert register[wrong["ticket"]] == f"INV-{receipts[wrong['client_id']]['invoice_no']:06d}"
    assert [(h["client_id"], h["server_id"], h["amount"], h["state"], h["resumed_by"],
             h["note"]) for h in report("held")] == [
        (held[0]["client_id"], receipts[held[0]["client_id"]]["server_id"], 1280, "resumed",
         resumer["client_id"], "later"),
        (held[1]["client_id"], receipts[held[1]["client_id"]]["server_id"], 3780, "held", None,
         None)]
    assert sorted((d["kind"], d["server_id"], d["amount"], d["note"])
                  for d in report("drafts")) == [
        ("journal_entry", receipts[drafts[1]["client_id"]]["server_id"], 90000, "accrual"),
        ("purchase_order", receipts[drafts[0]["client_id"]]["server_id"],
         40 * 150 + amount("2.5", 1201), "mill")]
    assert report("waiting") == []
    assert run_cli("report", "product", *where(relay), "--store", STORE, "--product",
                   "caviar", check=False).returncode == 2
    unsold = run_cli("report", "product", *where(relay), "--store", STORE, "--product",
                     "cheese", "--from", "2020-01-01", "--to", "2020-01-31").stdout
    assert "0 sold" in unsold and "average unit price none (nothing sold)" in unsold, unsold

    # The same over the HTTP API.
    token = cli_json("relay", "token", "--data", str(relay.data),
                     *(["--db", relay.db] if relay.db else []), "--store", STORE)["token"]
    base = f"/api/v1/stores/{STORE}/reports"
    assert get(relay, f"{base}/sales?by=product&period=week", token) == (
        200, report("sales", "--by", "product", "--period", "week"))
    for name in ("refunds", "expenses", "cash"):
        assert get(relay, f"{base}/{name}?period=month", token) == (
            200, report(name, "--period", "month"))
    for name in ("mismatches", "held", "drafts", "waiting"):
        assert get(relay, f"{base}/{name}", token) == (200, report(name))
    assert get(relay, f"{base}/product?product=cheese&from=2026-03-01&to=2026-03-31"
               "&period=week", token) == (200, cheese)
    assert get(relay, f"{base}/settings", token) == (200, {"store_name": "Money Shop",
                                                           "currency": "EUR"})
    status, error = get(relay, f"{base}/sales?by=till&period=week", token)
    assert status == 400 and "period= goes with" in error["error"]

    # The migration that brought these tables refills every total from the entries:
    # the same reports after it.
    every = [("sales", "--period", "week"), ("sales", "--by", "product", "--period", "day"),
             ("sales", "--by", "cashier"), ("refunds",), ("expenses",), ("cash",),
             ("mismatches",), ("held",), ("drafts",), ("shifts",)]
    before = [report(*r) for r in every]
    relay.kill()
    for sql in ("DROP TABLE tally_refunds", "DROP TABLE tally_product_refunds",
                "DROP TABLE tally_expenses", "DROP TABLE tally_cash_moves",
                "DROP TABLE report_items", "UPDATE tally_sales SET revenue = 0",
                "DELETE FROM schema_version WHERE version >= 8" if relay.db else
                "UPDATE meta SET value = '7' WHERE key = 'schema_version'"):
        query(relay, sql)
    migrated = run_cli("relay", "migrate", *where(relay)).stdout
    assert f"schema at version {PG_SCHEMA_VERSION if relay.db else SQLITE_SCHEMA_VERSION}" \
        in migrated
    assert [report(*r) for r in every] == before
    relay.start()

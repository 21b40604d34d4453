"""Reports of money that is not a sale, and one product's analytics.

Like the sales reports (``relay.reports``), each reads the running totals ingest keeps
per day (``relay.tallies``: ``tally_refunds``, ``tally_expenses``, ``tally_cash_moves``,
``tally_products`` and ``tally_product_refunds``), so its cost grows with the days of the
range, never with the entries in it.  Days are the entries' client days (UTC); an entry
counts once the relay has accepted it.
"""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal
from typing import Any

from tillsync.peer.errors import InvalidInput
from tillsync.relay import reports
from tillsync.relay.reports import Range, _days, _joined, _sum, check_period, period_of
from tillsync.relay.storage import RelayStorage

EVERY_DAY = Range()  # no bound either side


async def _per_period(storage: RelayStorage, store: str, period: str, within: Range,
                      table: str, group: str, count: str
                      ) -> list[tuple[str, tuple[Any, ...], int, int]]:
    """(period, ``group`` values, sum of ``count``, sum of amount) of a day tally."""
    await reports.check_store(storage, store)
    check_period(period)
    cond, args = _days(within)
    rows = await storage.read(
        f"SELECT day, {group}, sum({count}), {_sum('amount')} FROM {table} "
        f"WHERE store = ?{cond} GROUP BY day, {group}", (store, *args))
    return [(period_of(r[0], period), tuple(r[1:-3]), int(r[-3]), _joined(r[-2], r[-1]))
            for r in rows]


async def refunds(storage: RelayStorage, store: str, period: str = "day",
                  within: Range = EVERY_DAY) -> list[dict[str, Any]]:
    """Per day, week or month: number of refunds, money returned, and that money per
    method (cash, card, account, ...)."""
    out: dict[str, dict[str, Any]] = {}
    for key, (method,), n, amount in await _per_period(
            storage, store, period, within, "tally_refunds", "method", "refunds"):
        row = out.setdefault(key, {"period": key, "refunds": 0, "amount": 0, "by_method": {}})
        row["refunds"] += n
        row["amount"] += amount
        row["by_method"][method] = row["by_method"].get(method, 0) + amount
    return [out[key] for key in sorted(out)]


async def expenses(storage: RelayStorage, store: str, period: str = "day",
                   within: Range = EVERY_DAY) -> list[dict[str, Any]]:
    """Per day, week or month and category: number of expenses and amount, and of those
    the amount paid in cash (out of a drawer or not)."""
    out: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    for key, (category, method), n, amount in await _per_period(
            storage, store, period, within, "tally_expenses", "category, method", "expenses"):
        bucket = out[(key, category)]
        bucket[0] += n
        bucket[1] += amount
        bucket[2] += amount if method == "cash" else 0
    return [{"period": key, "category": category, "expenses": n, "amount": amount,
             "cash": cash} for (key, category), (n, amount, cash) in sorted(out.items())]


async def cash_movements(storage: RelayStorage, store: str, period: str = "day",
                         within: Range = EVERY_DAY) -> list[dict[str, Any]]:
    """Per day, week or month: cash put into drawers and taken out (counts and amounts,
    both positive) and the net (in - out)."""
    out: dict[str, dict[str, Any]] = {}
    for key, (direction,), n, amount in await _per_period(
            storage, store, period, within, "tally_cash_moves", "direction", "moves"):
        row = out.setdefault(key, {"period": key, "moves_in": 0, "cash_in": 0,
                                   "moves_out": 0, "cash_out": 0, "net": 0})
        row[f"moves_{direction}"] += n
        row[f"cash_{direction}"] += amount
        row["net"] += amount if direction == "in" else -amount
    return [out[key] for key in sorted(out)]


async def product(storage: RelayStorage, store: str, product_id: str | None,
                  period: str = "day", within: Range = EVERY_DAY) -> dict[str, Any]:
    """One product over a date range: its name, total quantity sold and refunded,
    number of sales, gross, refunds, net revenue, average unit price (gross / quantity
    sold), and the same per day, week or month (``breakdown``, every period of the range
    that has a sale or refund of it)."""
    if not product_id:
        raise InvalidInput("product analytics need a product (--product ID, product=ID)")
    rows = await reports.sales_by_product(storage, store, within, product_id, period)
    catalogue = await reports.master(storage, store, "products")
    qty = sum((Decimal(r["qty"]) for r in rows), Decimal(0))
    back = sum((Decimal(r["refunded_qty"]) for r in rows), Decimal(0))
    gross = sum(r["gross"] for r in rows)
    refunded = sum(r["refunds"] for r in rows)
    return {"product_id": product_id, "name": catalogue.get(product_id, {}).get("name"),
            "from": within.start.isoformat() if within.start else None,
            "to": within.end.isoformat() if within.end else None, "period": period,
            "qty": format(qty.normalize(), "f"), "refunded_qty": format(back.normalize(), "f"),
            "sales": sum(r["sales"] for r in rows), "gross": gross, "refunds": refunded,
            "revenue": gross - refunded,
            "avg_unit_price": round(gross / qty) if qty else None,
            "breakdown": [{k: v for k, v in r.items() if k not in ("product_id", "name")}
                          for r in rows]}


async def settings(storage: RelayStorage, store: str) -> dict[str, Any]:
    """What a report's reader needs of the store's settings: its name and currency (an
    ISO 4217 code, or "" if the store has set none)."""
    await reports.check_store(storage, store)
    found = (await reports.master(storage, store, "settings")).get("store", {})
    return {"store_name": found.get("store_name", ""), "currency": found.get("currency", "")}

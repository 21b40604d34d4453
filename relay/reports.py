"""Central reporting: what the relay has ingested, one store at a time.

Every report reads the relay's own tables through ``RelayStorage.read`` (SQL both
backends speak), so it is the same on SQLite and PostgreSQL, and every query is scoped
by store.  A sale counts once the relay has numbered it: the invoice register is the
source of truth for sales; a sale's lines come from its ingested entry.

This first version aggregates sales in Python from the numbered sales of the range it
is asked for (O(sales in the range)); aggregates maintained in the ingest transaction
are the next step for a year of a busy shop (issue 6's 200 ms target is not measured).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import msgpack

from peer.errors import InvalidInput
from peer.master import MasterData
from peer.totals import line_amount
from peer.views import effects, format_quantity, from_millionths, stock_row
from relay.storage import RelayStorage

PERIODS = ("day", "week", "month")


@dataclass(frozen=True)
class Range:
    """Sales whose client time falls on ``start`` .. ``end`` (dates, both included)."""

    start: date | None = None
    end: date | None = None

    @classmethod
    def parse(cls, start: str | None, end: str | None) -> Range:
        """From ``YYYY-MM-DD`` strings; raises ``InvalidInput`` saying what is wrong."""
        parsed: list[date | None] = []
        for name, text in (("--from", start), ("--to", end)):
            if text is None:
                parsed.append(None)
                continue
            try:
                parsed.append(date.fromisoformat(text))
            except ValueError:
                raise InvalidInput(f"{name} {text!r} is not a date (YYYY-MM-DD)") from None
        if parsed[0] and parsed[1] and parsed[0] > parsed[1]:
            raise InvalidInput(f"--from {start} is after --to {end}")
        return cls(parsed[0], parsed[1])

    def where(self, column: str) -> tuple[str, list[object]]:
        """SQL condition and arguments for an RFC 3339 UTC timestamp column (text order
        is time order)."""
        sql, args = "", list[object]()
        if self.start is not None:
            sql += f" AND {column} >= ?"
            args.append(self.start.isoformat())
        if self.end is not None:
            sql += f" AND {column} < ?"
            args.append((self.end + timedelta(days=1)).isoformat())
        return sql, args


def period_of(timestamp: str, period: str) -> str:
    """The day (2026-11-23), ISO week (2026-W48) or month (2026-11) of a timestamp."""
    if period == "day":
        return timestamp[:10]
    if period == "month":
        return timestamp[:7]
    if period == "week":
        year, week, _ = date.fromisoformat(timestamp[:10]).isocalendar()
        return f"{year}-W{week:02d}"
    raise InvalidInput(f"unknown period {period!r}: one of {', '.join(PERIODS)}")


async def check_store(storage: RelayStorage, store: str) -> None:
    """Raise ``InvalidInput`` if the relay has never heard of ``store``."""
    if not await storage.read("SELECT 1 FROM devices WHERE store = ? LIMIT 1", (store,)):
        raise InvalidInput(f"the relay has no store {store!r} (no device enrolled in it)")


async def _numbered_sales(storage: RelayStorage, store: str, within: Range
                          ) -> list[tuple[Any, ...]]:
    """(client time, device, total, body) of every numbered sale in the range."""
    cond, args = within.where("i.client_created_at")
    return await storage.read(
        "SELECT i.client_created_at, i.device_id, i.total, e.body FROM invoices i "
        "JOIN entries e ON e.store = i.store AND e.client_id = i.client_id "
        f"WHERE i.store = ?{cond} ORDER BY i.series, i.invoice_no", (store, *args))


async def sales_by_period(storage: RelayStorage, store: str, period: str = "day",
                          within: Range = Range()) -> list[dict[str, Any]]:
    """Per day, week or month: number of sales and revenue (minor units)."""
    await check_store(storage, store)
    if period not in PERIODS:
        raise InvalidInput(f"unknown period {period!r}: one of {', '.join(PERIODS)}")
    cond, args = within.where("client_created_at")
    rows = await storage.read(f"SELECT client_created_at, total FROM invoices "
                              f"WHERE store = ?{cond}", (store, *args))
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for at, total in rows:
        bucket = out[period_of(at, period)]
        bucket[0] += 1
        bucket[1] += int(total)
    return [{"period": key, "sales": n, "revenue": revenue}
            for key, (n, revenue) in sorted(out.items())]


async def sales_by_product(storage: RelayStorage, store: str,
                           within: Range = Range()) -> list[dict[str, Any]]:
    """Per product: quantity sold (decimal for weighed products), revenue, number of
    sales it was in, and average unit price (revenue / quantity, rounded)."""
    await check_store(storage, store)
    qty: dict[str, Decimal] = defaultdict(Decimal)
    revenue: dict[str, int] = defaultdict(int)
    sales: dict[str, int] = defaultdict(int)
    for _, _, _, body in await _numbered_sales(storage, store, within):
        seen = set()
        for line in msgpack.unpackb(bytes(body), raw=False)["lines"]:
            pid = line["product_id"]
            qty[pid] += Decimal(str(line["qty"]))
            revenue[pid] += line_amount(line)
            seen.add(pid)
        for pid in seen:
            sales[pid] += 1
    return [{"product_id": pid, "qty": format(qty[pid].normalize(), "f"),
             "revenue": revenue[pid], "sales": sales[pid],
             "avg_unit_price": round(revenue[pid] / qty[pid]) if qty[pid] else None}
            for pid in sorted(qty, key=lambda p: (-revenue[p], p))]


async def sales_by_till(storage: RelayStorage, store: str,
                        within: Range = Range()) -> list[dict[str, Any]]:
    """Per device: its name, number of sales and revenue."""
    await check_store(storage, store)
    cond, args = within.where("i.client_created_at")
    rows = await storage.read(
        "SELECT i.device_id, d.name, count(*), sum(i.total) FROM invoices i "
        "LEFT JOIN devices d ON d.store = i.store AND d.device_id = i.device_id "
        f"WHERE i.store = ?{cond} GROUP BY i.device_id, d.name ORDER BY i.device_id",
        (store, *args))
    return [{"device_id": r[0], "name": r[1], "sales": int(r[2]), "revenue": int(r[3])}
            for r in rows]


async def sales_by_cashier(storage: RelayStorage, store: str,
                           within: Range = Range()) -> list[dict[str, Any]]:
    """Per cashier (the one who opened the sale's shift): number of sales and revenue.
    A sale whose shift the relay has not seen opened counts under cashier None."""
    await check_store(storage, store)
    cashier_of = {client_id: msgpack.unpackb(bytes(body), raw=False).get("cashier_id")
                  for client_id, body in await storage.read(
                      "SELECT client_id, body FROM entries WHERE store = ? "
                      "AND kind = 'shift_open'", (store,))}
    out: dict[str | None, list[int]] = defaultdict(lambda: [0, 0])
    for _, _, total, body in await _numbered_sales(storage, store, within):
        shift = msgpack.unpackb(bytes(body), raw=False).get("shift_client_id")
        bucket = out[cashier_of.get(shift)]
        bucket[0] += 1
        bucket[1] += int(total)
    return [{"cashier_id": c, "sales": n, "revenue": r}
            for c, (n, r) in sorted(out.items(), key=lambda kv: (kv[0] is None, kv[0] or ""))]


async def invoice_register(storage: RelayStorage, store: str, within: Range = Range()
                           ) -> dict[str, Any]:
    """Every invoice (series, number, ticket, device, total, client time, issue time)
    and, per series, the numbers missing between 1 and the highest issued (there must
    be none: the relay numbers gaplessly)."""
    await check_store(storage, store)
    cond, args = within.where("client_created_at")
    rows = await storage.read(
        "SELECT series, invoice_no, ticket, device_id, total, client_created_at, issued_at "
        f"FROM invoices WHERE store = ?{cond} ORDER BY series, invoice_no", (store, *args))
    # The gap check covers the whole series, whatever the range asked for.
    numbers = await storage.read("SELECT series, invoice_no FROM invoices WHERE store = ?",
                                 (store,))
    issued: dict[str, set[int]] = defaultdict(set)
    for series, number in numbers:
        issued[series].add(int(number))
    series_report = [{"series": s, "issued": len(ns), "highest": max(ns),
                      "missing": sorted(set(range(1, max(ns) + 1)) - ns)}
                     for s, ns in sorted(issued.items())]
    invoices = [{"series": r[0], "invoice_no": int(r[1]), "ticket": r[2], "device_id": r[3],
                 "total": int(r[4]), "client_created_at": r[5], "issued_at": r[6]}
                for r in rows]
    return {"invoices": invoices, "series": series_report}


async def invoice_of_ticket(storage: RelayStorage, store: str, ticket: str
                            ) -> dict[str, Any] | None:
    """The invoice a provisional ticket (``TILL1-000042``) became, if numbered yet."""
    await check_store(storage, store)
    rows = await storage.read(
        "SELECT series, invoice_no, device_id, total, client_created_at, issued_at "
        "FROM invoices WHERE store = ? AND ticket = ?", (store, ticket))
    if not rows:
        return None
    r = rows[0]
    return {"ticket": ticket, "series": r[0], "invoice_no": int(r[1]), "device_id": r[2],
            "total": int(r[3]), "client_created_at": r[4], "issued_at": r[5]}


async def _catalogue(storage: RelayStorage, store: str) -> dict[str, dict[str, Any]]:
    """The store's products, from the master document the relay holds."""
    data, _ = await storage.document_at(store)
    if not data:
        return {}
    return MasterData.load(data, bytes(16)).all("products")


async def stock(storage: RelayStorage, store: str) -> list[dict[str, Any]]:
    """Current stock of every product the relay tracks (volatile ones are not tracked:
    their suggested price instead), with its reorder level and whether it is low."""
    await check_store(storage, store)
    products = await _catalogue(storage, store)
    levels = dict(await storage.read("SELECT product_id, qty FROM stock WHERE store = ?",
                                     (store,)))
    prices = dict(await storage.read("SELECT product_id, price FROM prices WHERE store = ?",
                                     (store,)))
    return [stock_row(pid, products.get(pid, {}),
                      from_millionths(int(levels.get(pid, 0))), prices.get(pid))
            for pid in sorted(set(products) | set(levels))]


async def alerts(storage: RelayStorage, store: str, within: Range = Range()
                 ) -> list[dict[str, Any]]:
    """Low-stock alerts: the entry that took a product below its reorder level, when."""
    await check_store(storage, store)
    cond, args = within.where("at")
    rows = await storage.read(
        "SELECT at, product_id, qty, reorder_level, client_id FROM alerts "
        f"WHERE store = ?{cond} ORDER BY at, product_id", (store, *args))
    return [{"at": r[0], "product_id": r[1],
             "qty": format_quantity(from_millionths(int(r[2]))),
             "reorder_level": format_quantity(from_millionths(int(r[3]))), "client_id": r[4]}
            for r in rows]


async def devices(storage: RelayStorage, store: str) -> list[dict[str, Any]]:
    """Every device of the store: role, last contact, entries the relay holds (highest
    seq, last received), rejected entries with the latest reason, revocation."""
    await check_store(storage, store)
    held = {r[0]: r[1:] for r in await storage.read(
        "SELECT device_id, count(*), max(seq), max(received_at) FROM entries "
        "WHERE store = ? GROUP BY device_id", (store,))}
    rejected: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for r in await storage.read("SELECT device_id, code, message, at FROM rejected "
                                "WHERE store = ? ORDER BY at", (store,)):
        rejected[r[0]].append(r[1:])
    rows = await storage.read(
        "SELECT device_id, name, role, enrolled_at, last_seen, revoked_at FROM devices "
        "WHERE store = ? ORDER BY name, device_id", (store,))
    out = []
    for device_id, name, role, enrolled, seen, revoked in rows:
        count, top, received = held.get(device_id, (0, 0, None))
        refusals = rejected.get(device_id, [])
        out.append({"device_id": device_id, "name": name, "role": role,
                    "enrolled_at": enrolled, "last_seen": seen, "revoked_at": revoked,
                    "entries": int(count), "highest_seq": int(top or 0),
                    "last_received_at": received, "rejected": len(refusals),
                    "last_rejection": (f"{refusals[-1][0]}: {refusals[-1][1]}"
                                       if refusals else None)})
    return out


_CASH_COLUMN = {"shift_open": "opening_cash", "sale": "cash_sales", "refund": "cash_refunds"}


async def shifts(storage: RelayStorage, store: str, within: Range = Range()
                 ) -> list[dict[str, Any]]:
    """Shift (Z) reports: per shift opened in the range, its till, cashier and server
    id; opening cash, cash sales, cash refunds, cash in and out, other cash (customer
    payments, expenses); expected cash (by the same rule as the till's view,
    ``peer.views.effects``), counted cash, variance and its reason once closed.  Entries
    the relay rejected count for nothing."""
    await check_store(storage, store)
    cond, args = within.where("client_created_at")
    opened = await storage.read(
        "SELECT client_id, device_id, client_created_at, body FROM entries "
        f"WHERE store = ? AND kind = 'shift_open'{cond} ORDER BY client_created_at",
        (store, *args))
    if not opened:
        return []
    ids = {r[0] for r in opened}
    server_ids = dict(await storage.read(
        "SELECT client_id, server_id FROM mappings WHERE store = ? AND kind = 'shift'",
        (store,)))
    rejected = {r[0] for r in await storage.read(
        "SELECT client_id FROM rejected WHERE store = ?", (store,))}
    names = {d.device_id: d.name for d in await storage.devices(store)}
    cash: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    closes: dict[str, tuple[str, dict[str, Any]]] = {}
    for client_id, kind, at, body in await storage.read(
            "SELECT client_id, kind, client_created_at, body FROM entries WHERE store = ? "
            "AND kind IN ('shift_open', 'shift_close', 'sale', 'refund', 'cash_movement', "
            "'customer_payment', 'expense')", (store,)):
        if client_id in rejected:
            continue
        fields = msgpack.unpackb(bytes(body), raw=False)
        if kind == "shift_close":
            if fields["open_shift_client_id"] in ids:
                closes[fields["open_shift_client_id"]] = (at, fields)
            continue
        for effect in effects(kind, client_id, fields):
            if effect.view != "cash" or effect.key not in ids:
                continue
            amount = int(effect.value)
            column = _CASH_COLUMN.get(kind) or (
                ("cash_in" if amount > 0 else "cash_out") if kind == "cash_movement"
                else "other_cash")
            cash[effect.key][column] += amount
    out = []
    for client_id, device_id, at, body in opened:
        fields = msgpack.unpackb(bytes(body), raw=False)
        moves = cash[client_id]
        expected = sum(moves.values())
        row: dict[str, Any] = {
            "shift": client_id, "server_id": server_ids.get(client_id),
            "device_id": device_id, "till": names.get(device_id),
            "cashier_id": fields.get("cashier_id"), "opened_at": at,
            **{c: moves.get(c, 0) for c in ("opening_cash", "cash_sales", "cash_refunds",
                                            "cash_in", "cash_out", "other_cash")},
            "expected_cash": expected, "closed_at": None, "counted_cash": None,
            "variance": None, "variance_reason": None}
        if client_id in closes:
            closed_at, close = closes[client_id]
            row.update(closed_at=closed_at, counted_cash=close["closing_cash"],
                       variance=close["closing_cash"] - expected,
                       variance_reason=close.get("variance_reason"))
        out.append(row)
    return out

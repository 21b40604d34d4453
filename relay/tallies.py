"""Running totals for the reports, kept up to date inside the ingest transaction.

A year of a busy shop is a million sales; a report that reads them all takes seconds
(``tools.bench_reports``).  So ingest adds each decided entry to a few small tables,
and the reports read those:

* ``tally_sales``: per (client day, device, shift) the number of numbered sales and
  their revenue, for sales by day/week/month, by till and by cashier (a shift has one
  cashier);
* ``tally_products``: per (client day, product) quantity (millionths), revenue and the
  number of sales the product was in;
* ``tally_series``: per invoice series the number of invoices issued, for the gap
  check (issued = highest number, the numbers being unique, means no gap);
* ``tally_shifts``: per shift its till, cashier, opening and closing (counted cash,
  variance reason), and ``tally_cash``: per (shift, column) the cash it moved, for the
  Z report.

A sale counts once the relay has numbered it, other entries once accepted: exactly
what the reports counted when they read the raw rows.  Every write is an upsert that
adds (``ON CONFLICT ... DO UPDATE``, the same SQL on SQLite and PostgreSQL), inside
the batch's transaction, so totals and the rows they sum commit together.

``rebuild`` computes the same totals from the raw rows: the schema migration that
introduced these tables fills them with it for a relay database that already holds
sales.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from tillsync.peer.totals import line_figures
from tillsync.peer.views import effects

# The Z report's columns, by the kind of entry that moves the cash.
_CASH_COLUMN = {"shift_open": "opening_cash", "sale": "cash_sales", "refund": "cash_refunds"}
CASH_KINDS = ("shift_open", "sale", "refund", "cash_movement", "customer_payment", "expense")
CASH_COLUMNS = ("opening_cash", "cash_sales", "cash_refunds", "cash_in", "cash_out",
                "other_cash")

Read = Callable[[str, Sequence[object]], Awaitable[list[tuple[Any, ...]]]]


@dataclass
class Tallies:
    """What one batch adds to the running totals, gathered in memory."""

    sales: dict[tuple[str, str, str], list[int]] = field(
        default_factory=lambda: defaultdict(lambda: [0, 0]))
    products: dict[tuple[str, str], list[int]] = field(
        default_factory=lambda: defaultdict(lambda: [0, 0, 0]))
    cash: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    opened: dict[str, tuple[str, str | None, str]] = field(default_factory=dict)
    closed: dict[str, tuple[str, int, str | None]] = field(default_factory=dict)
    issued: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def __bool__(self) -> bool:
        return bool(self.sales or self.products or self.cash or self.opened or self.closed
                    or self.issued)

    def add(self, kind: str, client_id: str, device_id: str, at: str,
            body: dict[str, Any], total: int | None = None, series: str | None = None,
            lines: Sequence[tuple[int, int]] | None = None) -> None:
        """Count one accepted entry (a sale with its recomputed ``total`` and its invoice
        ``series``, once numbered; ``lines``: its lines' (amount, quantity in millionths),
        if the caller has them already)."""
        # Everything is read from the body first, then added: an entry is counted whole
        # or, if reading it fails, not at all.
        if kind == "sale":
            assert total is not None and series is not None
            if lines is None:
                lines = line_figures(body["lines"])
            day, shift = at[:10], body["shift_client_id"]
            rows = [(line["product_id"], amount, qty)
                    for line, (amount, qty) in zip(body["lines"], lines, strict=True)]
            # Cash the sale took: its cash payments (the rule of peer.views.effects,
            # without building every effect of the sale).
            cash = sum(p["amount"] for p in body["payments"] if p["method"] == "cash")
            self.issued[series] += 1
            bucket = self.sales[(day, device_id, shift)]
            bucket[0] += 1
            bucket[1] += total
            seen = set()
            for product_id, amount, qty in rows:
                product = self.products[(day, product_id)]
                product[0] += qty
                product[1] += amount
                if product_id not in seen:
                    seen.add(product_id)
                    product[2] += 1
            if cash:
                self.cash[(shift, "cash_sales")] += cash
            return
        elif kind == "shift_open":
            self.opened[client_id] = (device_id, body.get("cashier_id"), at)
        elif kind == "shift_close":
            self.closed[body["open_shift_client_id"]] = (
                at, body["closing_cash"], body.get("variance_reason"))
            return
        if kind not in CASH_KINDS:
            return
        moved = []
        for effect in effects(kind, client_id, body):
            if effect.view != "cash":
                continue
            amount = int(effect.value)
            column = _CASH_COLUMN.get(kind) or (
                ("cash_in" if amount > 0 else "cash_out") if kind == "cash_movement"
                else "other_cash")
            moved.append(((effect.key, column), amount))
        for key, amount in moved:
            self.cash[key] += amount

    def writes(self, store: str) -> list[tuple[str, list[tuple[Any, ...]]]]:
        """(SQL, rows) to run with ``executemany``, in this order, placeholders ``?``."""
        out: list[tuple[str, list[tuple[Any, ...]]]] = []
        if self.sales:
            out.append((
                "INSERT INTO tally_sales (store, day, device_id, shift_client_id, sales, "
                "revenue) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (store, day, device_id, "
                "shift_client_id) DO UPDATE SET sales = tally_sales.sales + excluded.sales, "
                "revenue = tally_sales.revenue + excluded.revenue",
                [(store, *key, *value) for key, value in sorted(self.sales.items())]))
        if self.products:
            out.append((
                "INSERT INTO tally_products (store, day, product_id, qty, revenue, sales) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (store, day, product_id) DO UPDATE "
                "SET qty = tally_products.qty + excluded.qty, revenue = "
                "tally_products.revenue + excluded.revenue, sales = tally_products.sales "
                "+ excluded.sales",
                [(store, *key, *value) for key, value in sorted(self.products.items())]))
        if self.cash:
            out.append((
                "INSERT INTO tally_cash (store, shift_client_id, cash_column, amount) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (store, shift_client_id, cash_column) "
                "DO UPDATE SET amount = tally_cash.amount + excluded.amount",
                [(store, *key, value) for key, value in sorted(self.cash.items())]))
        if self.issued:
            out.append((
                "INSERT INTO tally_series (store, series, issued) VALUES (?, ?, ?) "
                "ON CONFLICT (store, series) DO UPDATE SET issued = tally_series.issued "
                "+ excluded.issued",
                [(store, series, n) for series, n in sorted(self.issued.items())]))
        if self.opened:
            out.append((
                "INSERT INTO tally_shifts (store, shift_client_id, device_id, cashier_id, "
                "opened_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (store, shift_client_id) "
                "DO UPDATE SET device_id = excluded.device_id, cashier_id = "
                "excluded.cashier_id, opened_at = excluded.opened_at",
                [(store, shift, *value) for shift, value in sorted(self.opened.items())]))
        if self.closed:
            # A close is accepted only after its open, but an upsert needs no order.
            out.append((
                "INSERT INTO tally_shifts (store, shift_client_id, closed_at, counted_cash, "
                "variance_reason) VALUES (?, ?, ?, ?, ?) ON CONFLICT (store, "
                "shift_client_id) DO UPDATE SET closed_at = excluded.closed_at, "
                "counted_cash = excluded.counted_cash, variance_reason = "
                "excluded.variance_reason",
                [(store, shift, *value) for shift, value in sorted(self.closed.items())]))
        return out


# An index of the invoice register by sale time (its latest rows of a range).
INVOICES_BY_TIME = "CREATE INDEX invoices_by_time ON invoices (store, client_created_at);"
# The tables, in SQL both backends accept (``BIGINT`` is an integer to SQLite), and that
# index.
SCHEMA = """
CREATE TABLE tally_series (
    store TEXT NOT NULL, series TEXT NOT NULL, issued BIGINT NOT NULL,
    PRIMARY KEY (store, series)
);
""" + INVOICES_BY_TIME + """
CREATE TABLE tally_sales (
    store TEXT NOT NULL, day TEXT NOT NULL, device_id TEXT NOT NULL,
    shift_client_id TEXT NOT NULL, sales BIGINT NOT NULL, revenue BIGINT NOT NULL,
    PRIMARY KEY (store, day, device_id, shift_client_id)
);
CREATE TABLE tally_products (
    store TEXT NOT NULL, day TEXT NOT NULL, product_id TEXT NOT NULL,
    qty BIGINT NOT NULL, revenue BIGINT NOT NULL, sales BIGINT NOT NULL,
    PRIMARY KEY (store, day, product_id)
);
CREATE TABLE tally_shifts (
    store TEXT NOT NULL, shift_client_id TEXT NOT NULL, device_id TEXT, cashier_id TEXT,
    opened_at TEXT, closed_at TEXT, counted_cash BIGINT, variance_reason TEXT,
    PRIMARY KEY (store, shift_client_id)
);
CREATE INDEX tally_shifts_by_open ON tally_shifts (store, opened_at);
CREATE TABLE tally_cash (
    store TEXT NOT NULL, shift_client_id TEXT NOT NULL, cash_column TEXT NOT NULL,
    amount BIGINT NOT NULL,
    PRIMARY KEY (store, shift_client_id, cash_column)
);
"""

Write = Callable[[str, list[tuple[Any, ...]]], Awaitable[None]]


async def rebuild(read: Read, write: Write, progress: Callable[[str], None] | None = None
                  ) -> int:
    """Fill the (empty) tally tables from the raw rows of every store; returns the number
    of sales counted.  Reads one store at a time and writes its totals in bulk."""
    stores = [r[0] for r in await read("SELECT DISTINCT store FROM entries", ())]
    counted = 0
    for store in stores:
        if progress:
            progress(f"tallies: store {store}")
        tallies = Tallies()
        # Entries stored in a chain but refused for their content (other refusals name
        # entries that were never stored, or a client_id an accepted entry holds).
        rejected = {r[0] for r in await read(
            "SELECT client_id FROM rejected WHERE store = ? AND code IN "
            "('malformed_body', 'unknown_kind', 'schema')", (store,))}
        waiting = {r[0] for r in await read(
            "SELECT client_id FROM waiting WHERE store = ?", (store,))}
        for client_id, device_id, at, total, series, body in await read(
                "SELECT i.client_id, i.device_id, i.client_created_at, i.total, i.series, "
                "e.body "
                "FROM invoices i JOIN entries e ON e.store = i.store "
                "AND e.client_id = i.client_id WHERE i.store = ?", (store,)):
            tallies.add("sale", client_id, device_id, at,
                        msgpack.unpackb(bytes(body), raw=False), int(total), series)
            counted += 1
        for client_id, kind, device_id, at, body in await read(
                "SELECT client_id, kind, device_id, client_created_at, body FROM entries "
                "WHERE store = ? AND kind IN ('shift_open', 'shift_close', 'refund', "
                "'cash_movement', 'customer_payment', 'expense')", (store,)):
            if client_id in rejected or client_id in waiting:
                continue
            tallies.add(kind, client_id, device_id, at, msgpack.unpackb(bytes(body), raw=False))
        for sql, rows in tallies.writes(store):
            await write(sql, rows)
    return counted

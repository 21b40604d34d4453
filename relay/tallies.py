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
  Z report;
* ``tally_refunds``: per (client day, device, shift, method) the number of refunds and
  the money returned (their ``amount``), which sales reports subtract from revenue;
  ``tally_product_refunds``: per (client day, product) the quantity refunded and the
  refunded lines' amounts;
* ``tally_expenses``: per (client day, device, category, method) count and amount;
  ``tally_cash_moves``: per (client day, device, direction) count and amount;
* ``report_items``: one row per thing a report lists by name rather than sums: a sale
  whose client total differed from the relay's (``total_mismatch``), a held sale (and
  the sale that resumed it), a purchase order or journal entry (drafts).

A sale counts once the relay has numbered it, other entries once accepted: exactly
what the reports counted when they read the raw rows.  Every write is an upsert that
adds (``ON CONFLICT ... DO UPDATE``, the same SQL on SQLite and PostgreSQL), inside
the batch's transaction, so totals and the rows they sum commit together.

``rebuild`` computes the same totals from the raw rows: the schema migration that
introduced the latest of these tables empties them all and fills them with it, for a
relay database that already holds entries.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import msgpack

from tillsync.peer.totals import line_figures
from tillsync.peer.views import effects, quantity
from tillsync.schemas.limits import in_range

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
    refunds: dict[tuple[str, str, str, str], list[int]] = field(
        default_factory=lambda: defaultdict(lambda: [0, 0]))
    product_refunds: dict[tuple[str, str], list[int]] = field(
        default_factory=lambda: defaultdict(lambda: [0, 0, 0]))
    expenses: dict[tuple[str, str, str, str], list[int]] = field(
        default_factory=lambda: defaultdict(lambda: [0, 0]))
    cash_moves: dict[tuple[str, str, str], list[int]] = field(
        default_factory=lambda: defaultdict(lambda: [0, 0]))
    # (kind, client_id) -> (device, at, ref, amount, other, note); held sale -> resumer
    items: dict[tuple[str, str], tuple[Any, ...]] = field(default_factory=dict)
    resumed: dict[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.sales or self.products or self.cash or self.opened or self.closed
                    or self.issued or self.refunds or self.product_refunds or self.expenses
                    or self.cash_moves or self.items or self.resumed)

    def add(self, kind: str, client_id: str, device_id: str, at: str,
            body: dict[str, Any], total: int | None = None, series: str | None = None,
            lines: Sequence[tuple[int, int]] | None = None, *, ticket: str | None = None,
            receipt: dict[str, Any] | None = None) -> None:
        """Count one accepted entry (a sale with its recomputed ``total`` and its invoice
        ``series``, once numbered; ``lines``: its lines' (amount, quantity in millionths),
        if the caller has them already; ``ticket`` and the relay's ``receipt`` name it in
        the lists: invoice number, server id)."""
        # Everything is read from the body first, then added: an entry is counted whole
        # or, if reading it fails, not at all.
        receipt = receipt or {}
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
            mismatch = body.get("client_total", total) != total
            held = body.get("held_transaction_client_id")
            if mismatch:
                number = receipt.get("invoice_no")
                self.items[("total_mismatch", client_id)] = (
                    device_id, at, ticket, total, body["client_total"],
                    None if number is None else f"{series}-{int(number):06d}")
            if isinstance(held, str):
                self.resumed[held] = client_id
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
        elif kind in _LISTED:
            self.items[(kind, client_id)] = (device_id, at, receipt.get("server_id"),
                                             *_LISTED[kind](body))
            return
        if kind not in CASH_KINDS:
            return
        # (table in memory, key, figures to add) of this entry, gathered before any is added.
        adds: list[tuple[Any, tuple[str, ...], tuple[int, ...]]] = []
        drawer: list[tuple[tuple[str, str], int]] = []
        day = at[:10]
        if kind == "refund":
            adds.append((self.refunds, (day, device_id, body.get("shift_client_id", ""),
                                        body["method"]), (1, int(body["amount"]))))
            products: dict[str, list[int]] = {}
            for line, (amount, qty) in zip(body["lines"], line_figures(body["lines"]),
                                           strict=True):
                refunded = products.setdefault(line["product_id"], [0, 0, 1])
                refunded[0] += qty
                refunded[1] += amount
            adds.extend((self.product_refunds, (day, product), tuple(refunded))
                        for product, refunded in products.items())
        elif kind == "expense":
            adds.append((self.expenses, (day, device_id, str(body["category"]), body["method"]),
                         (1, int(body["amount"]))))
        elif kind == "cash_movement":
            adds.append((self.cash_moves, (day, device_id, body["direction"]),
                         (1, int(body["amount"]))))
        for effect in effects(kind, client_id, body):
            if effect.view != "cash":
                continue
            amount = int(effect.value)
            column = _CASH_COLUMN.get(kind) or (
                ("cash_in" if amount > 0 else "cash_out") if kind == "cash_movement"
                else "other_cash")
            drawer.append(((effect.key, column), amount))
        for table, key, figures in adds:
            bucket = table[key]
            for i, figure in enumerate(figures):
                bucket[i] += figure
        for moved, amount in drawer:
            self.cash[moved] += amount

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
        for table, keys, values, found in (
                ("tally_refunds", "day, device_id, shift_client_id, method", ("refunds", "amount"),
                 self.refunds),
                ("tally_product_refunds", "day, product_id", ("qty", "amount", "refunds"),
                 self.product_refunds),
                ("tally_expenses", "day, device_id, category, method", ("expenses", "amount"),
                 self.expenses),
                ("tally_cash_moves", "day, device_id, direction", ("moves", "amount"),
                 self.cash_moves)):
            if found:
                out.append(_adding(table, keys, values, [
                    (store, *key, *value) for key, value in sorted(found.items())]))
        if self.items:
            out.append((
                "INSERT INTO report_items (store, kind, client_id, device_id, at, ref, amount, "
                "other, note) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (store, kind, "
                "client_id) DO UPDATE SET device_id = excluded.device_id, at = excluded.at, "
                "ref = excluded.ref, amount = excluded.amount, other = excluded.other, "
                "note = excluded.note",
                [(store, *key, *value) for key, value in sorted(self.items.items())]))
        if self.resumed:
            # A held sale is accepted before the sale that resumes it (that sale waits
            # for it), but an upsert needs no order.
            out.append((
                "INSERT INTO report_items (store, kind, client_id, closed_by) VALUES "
                "(?, 'held_sale', ?, ?) ON CONFLICT (store, kind, client_id) DO UPDATE SET "
                "closed_by = excluded.closed_by",
                [(store, held, sale) for held, sale in sorted(self.resumed.items())]))
        return out


def _adding(table: str, keys: str, values: Sequence[str], rows: list[tuple[Any, ...]]
            ) -> tuple[str, list[tuple[Any, ...]]]:
    """An upsert into ``table`` that adds ``values`` to the row of ``keys``."""
    columns = f"store, {keys}, {', '.join(values)}"
    marks = ", ".join("?" * (columns.count(",") + 1))
    sums = ", ".join(f"{v} = {table}.{v} + excluded.{v}" for v in values)
    return (f"INSERT INTO {table} ({columns}) VALUES ({marks}) ON CONFLICT (store, {keys}) "
            f"DO UPDATE SET {sums}", rows)


def _figure(value: Decimal) -> int | None:
    """A whole amount, or None outside the range a report carries."""
    whole = int(value.quantize(Decimal(1), ROUND_HALF_UP))
    return whole if in_range(whole) else None


def _held(body: dict[str, Any]) -> tuple[Any, ...]:
    amount = sum(amount for amount, _ in line_figures(body["lines"]))
    return (amount if in_range(amount) else None, None,
            body.get("customer_id") or body.get("note"))


def _order(body: dict[str, Any]) -> tuple[Any, ...]:
    cost = sum((quantity(line["qty"]) * line["unit_cost"] for line in body["lines"]),
               Decimal(0))
    return _figure(cost), None, body.get("supplier_id")


def _journal(body: dict[str, Any]) -> tuple[Any, ...]:
    debit = sum(int(line.get("debit", 0)) for line in body["lines"])
    return (debit if in_range(debit) else None, None, body.get("memo"))


# What a listed entry shows: (amount, other figure, note), from its body.
_LISTED: dict[str, Callable[[dict[str, Any]], tuple[Any, ...]]] = {
    "held_sale": _held, "purchase_order": _order, "journal_entry": _journal}


# An index of the invoice register by sale time (its latest rows of a range).
INVOICES_BY_TIME = "CREATE INDEX invoices_by_time ON invoices (store, client_created_at);"
# An index of the invoice register by provisional ticket, for "which invoice did this
# ticket become" (``relay.reports.invoice_of_ticket``): without it the lookup reads every
# invoice of the store.  Entries without a ticket are left out of it.  Keyed by the ticket
# alone (the store is in each of its rows, as part of the table's key): SQLite, with no
# planner statistics as a relay runs, prefers the primary key's ``store = ?`` over an
# index on (store, ticket) and reads every invoice of the store.
INVOICES_BY_TICKET = ("CREATE INDEX IF NOT EXISTS invoices_by_ticket ON invoices (ticket) "
                      "WHERE ticket IS NOT NULL;")
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

# The tables of the refunds, expenses, cash movements and listed items (schema 8 on
# SQLite, migration 8 on PostgreSQL), and what that migration empties before it fills
# every table again (``rebuild``).
REPORTS_SCHEMA = """
CREATE TABLE tally_refunds (
    store TEXT NOT NULL, day TEXT NOT NULL, device_id TEXT NOT NULL,
    shift_client_id TEXT NOT NULL, method TEXT NOT NULL, refunds BIGINT NOT NULL,
    amount BIGINT NOT NULL,
    PRIMARY KEY (store, day, device_id, shift_client_id, method)
);
CREATE TABLE tally_product_refunds (
    store TEXT NOT NULL, day TEXT NOT NULL, product_id TEXT NOT NULL,
    qty BIGINT NOT NULL, amount BIGINT NOT NULL, refunds BIGINT NOT NULL,
    PRIMARY KEY (store, day, product_id)
);
CREATE TABLE tally_expenses (
    store TEXT NOT NULL, day TEXT NOT NULL, device_id TEXT NOT NULL, category TEXT NOT NULL,
    method TEXT NOT NULL, expenses BIGINT NOT NULL, amount BIGINT NOT NULL,
    PRIMARY KEY (store, day, device_id, category, method)
);
CREATE TABLE tally_cash_moves (
    store TEXT NOT NULL, day TEXT NOT NULL, device_id TEXT NOT NULL, direction TEXT NOT NULL,
    moves BIGINT NOT NULL, amount BIGINT NOT NULL,
    PRIMARY KEY (store, day, device_id, direction)
);
CREATE TABLE report_items (
    store TEXT NOT NULL, kind TEXT NOT NULL, client_id TEXT NOT NULL, device_id TEXT,
    at TEXT, ref TEXT, amount BIGINT, other BIGINT, note TEXT, closed_by TEXT,
    PRIMARY KEY (store, kind, client_id)
);
CREATE INDEX report_items_by_time ON report_items (store, kind, at);
DELETE FROM tally_sales;
DELETE FROM tally_products;
DELETE FROM tally_series;
DELETE FROM tally_shifts;
DELETE FROM tally_cash;
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
        for client_id, device_id, at, total, series, number, ticket, body in await read(
                "SELECT i.client_id, i.device_id, i.client_created_at, i.total, i.series, "
                "i.invoice_no, i.ticket, e.body "
                "FROM invoices i JOIN entries e ON e.store = i.store "
                "AND e.client_id = i.client_id WHERE i.store = ?", (store,)):
            tallies.add("sale", client_id, device_id, at,
                        msgpack.unpackb(bytes(body), raw=False), int(total), series,
                        ticket=ticket, receipt={"invoice_no": number})
            counted += 1
        # The server ids of the drafts and held sales, from their receipts.
        server_ids = {}
        for (data,) in await read("SELECT data FROM receipts WHERE store = ?", (store,)):
            receipt = msgpack.unpackb(bytes(data), raw=False)
            if receipt.get("kind") in _LISTED and "server_id" in receipt:
                server_ids[receipt["client_id"]] = receipt["server_id"]
        for client_id, kind, device_id, at, body in await read(
                "SELECT client_id, kind, device_id, client_created_at, body FROM entries "
                "WHERE store = ? AND kind IN ('shift_open', 'shift_close', 'refund', "
                "'cash_movement', 'customer_payment', 'expense', 'held_sale', "
                "'purchase_order', 'journal_entry')", (store,)):
            if client_id in rejected or client_id in waiting:
                continue
            tallies.add(kind, client_id, device_id, at, msgpack.unpackb(bytes(body), raw=False),
                        receipt={"server_id": server_ids.get(client_id)})
        for sql, rows in tallies.writes(store):
            await write(sql, rows)
    return counted

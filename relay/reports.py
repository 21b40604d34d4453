"""Central reporting: what the relay has ingested, one store at a time.

Every report reads the relay's own tables through ``RelayStorage.read`` (SQL both
backends speak), so it is the same on SQLite and PostgreSQL, and every query is scoped
by store.  A sale counts once the relay has numbered it.

Sales and shift reports read the running totals that ingest keeps per day, product
and shift (``relay.tallies``), so their cost grows with the days and products of the
range, not with its sales.  Sales revenue is net of refunds: each sales row has
``gross`` (what the numbered sales took), ``refunds`` (money refunded in the same days,
by refund time; per product, the refunded lines' amounts), ``refund_count`` and
``revenue`` = gross - refunds.  The refunds, expenses, cash movements and product
analytics are ``relay.reports_money``, the listed items ``relay.reports_lists``.  The
invoice register reads the invoices themselves (ask for the ``limit`` sold last of a
long range).  ``tools.bench_reports`` times them all on a year of a busy shop.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from tillsync.peer.errors import InvalidInput
from tillsync.peer.master import MasterData
from tillsync.peer.views import format_quantity, from_millionths, stock_row
from tillsync.relay.storage import RelayStorage
from tillsync.relay.tallies import CASH_COLUMNS

PERIODS = ("day", "week", "month")

# Sums of running totals are taken in SQL in two parts, each far from the 64-bit limit
# whatever the rows hold (SQLite's sum() fails on overflow): ``_sum("x")`` selects the
# sum of x's high and of its low 32 bits (SQL's / and % truncate toward zero on both
# backends, so x = high * 2^32 + low exactly), and ``_joined`` puts them back together.
_HALF = 1 << 32


def _sum(column: str) -> str:
    return f"sum({column} / {_HALF}), sum({column} % {_HALF})"


def _joined(high: Any, low: Any) -> int:
    return int(high or 0) * _HALF + int(low or 0)


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


def _days(within: Range) -> tuple[str, list[object]]:
    """SQL condition and arguments on a tally's ``day`` column (``YYYY-MM-DD``)."""
    sql, args = "", list[object]()
    if within.start is not None:
        sql += " AND day >= ?"
        args.append(within.start.isoformat())
    if within.end is not None:
        sql += " AND day <= ?"
        args.append(within.end.isoformat())
    return sql, args


def _netted(row: dict[str, Any], gross: int, refunds: tuple[int, int]) -> dict[str, Any]:
    """``row`` with gross, refund_count, refunds and revenue (gross - refunds)."""
    count, amount = refunds
    row.update(gross=gross, refund_count=count, refunds=amount, revenue=gross - amount)
    return row


async def _refunded(storage: RelayStorage, store: str, within: Range, group: str
                    ) -> dict[Any, tuple[int, int]]:
    """Refunds of the range (count, money returned) per ``group``: a column of
    ``tally_refunds`` (``r.day``, ``r.device_id``) or ``s.cashier_id`` (the cashier of
    the refund's shift; None without a shift or one the relay has not seen opened)."""
    cond, args = _days(within)
    rows = await storage.read(
        f"SELECT {group}, sum(r.refunds), {_sum('r.amount')} FROM tally_refunds r "
        "LEFT JOIN tally_shifts s ON s.store = r.store AND s.shift_client_id = "
        f"r.shift_client_id WHERE r.store = ?{cond.replace('day', 'r.day')} GROUP BY {group}",
        (store, *args))
    return {key: (int(n), _joined(high, low)) for key, n, high, low in rows}


def check_period(period: str) -> None:
    if period not in PERIODS:
        raise InvalidInput(f"unknown period {period!r}: one of {', '.join(PERIODS)}")


async def sales_by_period(storage: RelayStorage, store: str, period: str = "day",
                          within: Range = Range()) -> list[dict[str, Any]]:
    """Per day, week or month: number of sales, gross, refunds and net revenue (minor
    units).  A period with refunds and no sale has a row too."""
    await check_store(storage, store)
    check_period(period)
    cond, args = _days(within)
    rows = await storage.read(f"SELECT day, sum(sales), {_sum('revenue')} FROM tally_sales "
                              f"WHERE store = ?{cond} GROUP BY day", (store, *args))
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for day, n, high, low in rows:
        bucket = out[period_of(day, period)]
        bucket[0] += int(n)
        bucket[1] += _joined(high, low)
    for day, (n, amount) in (await _refunded(storage, store, within, "r.day")).items():
        bucket = out[period_of(day, period)]
        bucket[2] += n
        bucket[3] += amount
    return [_netted({"period": key, "sales": n}, gross, (count, refunds))
            for key, (n, gross, count, refunds) in sorted(out.items())]


# What ``sales_by_product`` groups the rows of a day and product by in SQL, besides the
# product, for each period (None: the whole range).
_PRODUCT_PERIOD_SQL: dict[str | None, str | None] = {
    None: None, "day": "day", "week": "day", "month": "substr(day, 1, 7)"}


def _period_key(grouped: str, period: str | None) -> str | None:
    """The period of a row ``sales_by_product`` grouped in SQL."""
    return None if period is None else period_of(grouped, period) if period == "week" \
        else grouped


async def sales_by_product(storage: RelayStorage, store: str, within: Range = Range(),
                           product: str | None = None, period: str | None = None
                           ) -> list[dict[str, Any]]:
    """Per product (or only ``product``), over the whole range or per ``period`` (day,
    week, month: then one row per period and product, ordered by period): its name,
    quantity sold (decimal for weighed products) and refunded, number of sales it was
    in, gross, refunds (the refunded lines' amounts), net revenue, and average unit
    price (gross / quantity sold, rounded).  A ``product`` the store never had is
    refused (``InvalidInput``)."""
    await check_store(storage, store)
    if period is not None:
        check_period(period)
    cond, args = _days(within)
    if product is not None:
        cond += " AND product_id = ?"
        args.append(product)
    # Summed in SQL down to a row per product (and period where SQL names it alike on
    # both backends; a week is made of its days here): a year holds a row per day and
    # product, tens of thousands, too many to add up in Python within the target.
    group = _PRODUCT_PERIOD_SQL[period]
    period_sql, by = (group, f"{group}, product_id") if group else ("''", "product_id")
    sold = await storage.read(
        f"SELECT {period_sql}, product_id, {_sum('qty')}, {_sum('revenue')}, sum(sales) FROM "
        f"tally_products WHERE store = ?{cond} GROUP BY {by}", (store, *args))
    back = await storage.read(
        f"SELECT {period_sql}, product_id, {_sum('qty')}, {_sum('amount')} FROM "
        f"tally_product_refunds WHERE store = ?{cond} GROUP BY {by}", (store, *args))
    # (period or None, product) -> qty sold, gross, sales, qty refunded, refunds
    found: dict[tuple[str | None, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    for when, pid, qty_high, qty_low, high, low, sales in sold:
        bucket = found[(_period_key(when, period), pid)]
        bucket[0] += _joined(qty_high, qty_low)
        bucket[1] += _joined(high, low)
        bucket[2] += int(sales)
    for when, pid, qty_high, qty_low, high, low in back:
        bucket = found[(_period_key(when, period), pid)]
        bucket[3] += _joined(qty_high, qty_low)
        bucket[4] += _joined(high, low)
    catalogue = await _catalogue(storage, store)
    out = []
    for (key, pid), (qty_m, gross, sales, back_m, refunds) in found.items():
        qty = from_millionths(qty_m)
        row = {"product_id": pid, "name": catalogue.get(pid, {}).get("name"),
               "qty": format(qty.normalize(), "f"),
               "refunded_qty": format(from_millionths(back_m).normalize(), "f"),
               "sales": sales, "avg_unit_price": round(gross / qty) if qty else None}
        if period is not None:
            row = {"period": key, **row}
        out.append(_netted(row, gross, (0, refunds)))
        del row["refund_count"]  # per product: lines refunded, not refunds counted
    if product is not None and not out and product not in catalogue \
            and not await storage.read("SELECT 1 FROM tally_products WHERE store = ? AND "
                                       "product_id = ? LIMIT 1", (store, product)):
        raise InvalidInput(f"the store has no product {product!r} (not in its catalogue, "
                           "never sold)")
    out.sort(key=lambda r: (r.get("period", ""), -r["revenue"], r["product_id"]))
    return out


async def sales_by_till(storage: RelayStorage, store: str,
                        within: Range = Range()) -> list[dict[str, Any]]:
    """Per device: its name, number of sales, gross, refunds it paid, net revenue."""
    await check_store(storage, store)
    cond, args = _days(within)
    rows = await storage.read(
        f"SELECT device_id, sum(sales), {_sum('revenue')} FROM tally_sales "
        f"WHERE store = ?{cond} GROUP BY device_id", (store, *args))
    sold = {r[0]: (int(r[1]), _joined(r[2], r[3])) for r in rows}
    back = await _refunded(storage, store, within, "r.device_id")
    names = {d.device_id: d.name for d in await storage.devices(store)}
    return [_netted({"device_id": d, "name": names.get(d), "sales": sold.get(d, (0, 0))[0]},
                    sold.get(d, (0, 0))[1], back.get(d, (0, 0)))
            for d in sorted(set(sold) | set(back))]


async def sales_by_cashier(storage: RelayStorage, store: str,
                           within: Range = Range()) -> list[dict[str, Any]]:
    """Per cashier (the one who opened the sale's shift, and their name): number of
    sales, gross, refunds paid in their shifts, net revenue.  A sale whose shift the
    relay has not seen opened counts under cashier None."""
    await check_store(storage, store)
    cond, args = _days(within)
    rows = await storage.read(
        f"SELECT s.cashier_id, sum(t.sales), {_sum('t.revenue')} FROM tally_sales t "
        "LEFT JOIN tally_shifts s ON s.store = t.store "
        "AND s.shift_client_id = t.shift_client_id "
        f"WHERE t.store = ?{cond.replace('day', 't.day')} GROUP BY s.cashier_id",
        (store, *args))
    sold = {c: (int(n), _joined(high, low)) for c, n, high, low in rows}
    back = await _refunded(storage, store, within, "s.cashier_id")
    names = await master(storage, store, "cashiers")
    return [_netted({"cashier_id": c, "name": names.get(c, {}).get("name") if c else None,
                     "sales": sold.get(c, (0, 0))[0]},
                    sold.get(c, (0, 0))[1], back.get(c, (0, 0)))
            for c in sorted(set(sold) | set(back), key=lambda c: (c is None, c or ""))]


async def invoice_register(storage: RelayStorage, store: str, within: Range = Range(),
                           limit: int | None = None) -> dict[str, Any]:
    """The invoices of the range (series, number, ticket, device, total, client time,
    issue time), all of them or the ``limit`` sold last (by the till's sale time: an
    offline sale gets a later number than sales made after it); the range's count and
    total; and, per series, the numbers missing between 1 and the highest issued (there must be
    none: the relay numbers gaplessly).  The gap check covers the whole series."""
    await check_store(storage, store)
    if limit is not None and limit < 0:
        raise InvalidInput(f"limit {limit} is negative")
    cond, args = within.where("client_created_at")
    columns = "series, invoice_no, ticket, device_id, total, client_created_at, issued_at"
    if limit is None:
        rows = await storage.read(f"SELECT {columns} FROM invoices WHERE store = ?{cond} "
                                  "ORDER BY series, invoice_no", (store, *args))
    else:  # the latest sold (an index by sale time), shown in number order
        rows = sorted(await storage.read(
            f"SELECT {columns} FROM invoices WHERE store = ?{cond} "
            "ORDER BY client_created_at DESC, invoice_no DESC LIMIT ?", (store, *args, limit)),
            key=lambda r: (r[0], r[1]))
    # The gap check: numbers are unique per series (the table's key) and start at 1, so
    # as many issued as the highest number means none is missing.  Issued is counted in
    # the transaction that adds the rows (``tally_series``; the register is append-only,
    # so rows and count stay equal), the highest read from the register itself; only when
    # they differ are the numbers read to name the missing ones.
    series_report = []
    for series, issued in await storage.read(
            "SELECT series, issued FROM tally_series WHERE store = ? ORDER BY series",
            (store,)):
        highest = int((await storage.read(
            "SELECT max(invoice_no) FROM invoices WHERE store = ? AND series = ?",
            (store, series)))[0][0] or 0)
        missing: list[int] = []
        if int(issued) != highest:
            have = {int(r[0]) for r in await storage.read(
                "SELECT invoice_no FROM invoices WHERE store = ? AND series = ?",
                (store, series))}
            missing = sorted(set(range(1, highest + 1)) - have)
        series_report.append({"series": series, "issued": int(issued), "highest": highest,
                              "missing": missing})
    days, day_args = _days(within)
    count, high, low = (await storage.read(
        f"SELECT coalesce(sum(sales), 0), {_sum('revenue')} FROM tally_sales "
        f"WHERE store = ?{days}", (store, *day_args)))[0]
    total = _joined(high, low)
    invoices = [{"series": r[0], "invoice_no": int(r[1]), "invoice": invoice_number(r[0], r[1]),
                 "ticket": r[2], "device_id": r[3], "total": int(r[4]),
                 "client_created_at": r[5], "issued_at": r[6]}
                for r in rows]
    return {"invoices": invoices, "series": series_report, "count": int(count),
            "total": int(total)}


# By the invoice register's index on tickets (``relay.tallies.INVOICES_BY_TICKET``).
TICKET_LOOKUP = ("SELECT series, invoice_no, device_id, total, client_created_at, issued_at "
                 "FROM invoices WHERE store = ? AND ticket = ?")


async def invoice_of_ticket(storage: RelayStorage, store: str, ticket: str
                            ) -> dict[str, Any] | None:
    """The invoice a provisional ticket (``TILL1-000042``) became, if numbered yet."""
    await check_store(storage, store)
    rows = await storage.read(TICKET_LOOKUP, (store, ticket))
    if not rows:
        return None
    r = rows[0]
    return {"ticket": ticket, "series": r[0], "invoice_no": int(r[1]),
            "invoice": invoice_number(r[0], r[1]), "device_id": r[2],
            "total": int(r[3]), "client_created_at": r[4], "issued_at": r[5]}


def invoice_number(series: str, number: int) -> str:
    """An official invoice number as every till prints it: ``INV-000009``."""
    return f"{series}-{int(number):06d}"


async def master(storage: RelayStorage, store: str, collection: str
                 ) -> dict[str, dict[str, Any]]:
    """One collection of the store's master data (products, cashiers, settings, ...),
    from the document the relay holds."""
    data, _ = await storage.document_at(store)
    if not data:
        return {}
    records = MasterData.load(data, bytes(16)).all(collection)
    for record in records.values():
        record.pop("pin_hash", None)
    return records


async def _catalogue(storage: RelayStorage, store: str) -> dict[str, dict[str, Any]]:
    """The store's products, from the master document the relay holds."""
    return await master(storage, store, "products")


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
    seq, last received), how late its latest entry arrived (``lag_s``: received minus
    made, by the till's clock), entries waiting at the relay for a shift or held sale not
    arrived yet, rejected entries with the latest reason, revocation.  What a till holds
    and has not sent is known only to the till (``tillsync peer status``).

    Rejections count against the device that **sent** the entry (the authenticated
    device of the link that carried it), whatever device id the entry bears: ``rejected``
    and ``last_rejection`` are about entries it sent, ``rejected_in_its_name`` counts
    rejected entries bearing its id that another device sent (forwarded by a till, or
    forged).  Rejections kept from before the relay recorded senders count against the
    entry's own device."""
    await check_store(storage, store)
    # A device's entries at the relay are its chain 1..head: the head row says it all
    # (one primary-key probe per device, not a scan of the store's entries).
    held: dict[str, tuple[int, str, str]] = {}
    for device in await storage.devices(store):
        head = await storage.read(
            "SELECT seq, received_at, client_created_at FROM entries WHERE store = ? "
            "AND device_id = ? ORDER BY seq DESC LIMIT 1", (store, device.device_id))
        if head:
            held[device.device_id] = (int(head[0][0]), head[0][1], head[0][2])
    # Driven by the waiting rows (few, often none), each entry found by its client id:
    # as a join, both planners walked every entry of the store, waiting or not.
    waiting = dict(await storage.read(
        "SELECT (SELECT e.device_id FROM entries e WHERE e.store = w.store "
        "AND e.client_id = w.client_id) AS device, count(DISTINCT w.client_id) "
        "FROM waiting w WHERE w.store = ? GROUP BY device", (store,)))
    rejected: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    in_its_name: dict[str, int] = defaultdict(int)
    for r in await storage.read("SELECT device_id, coalesce(sent_by, device_id), code, "
                                "message, at FROM rejected WHERE store = ? ORDER BY at",
                                (store,)):
        rejected[r[1]].append(r[2:])
        if r[1] != r[0]:
            in_its_name[r[0]] += 1
    rows = await storage.read(
        "SELECT device_id, name, role, enrolled_at, last_seen, revoked_at FROM devices "
        "WHERE store = ? ORDER BY name, device_id", (store,))
    out = []
    for device_id, name, role, enrolled, seen, revoked in rows:
        top, received, made = held.get(device_id, (0, None, None))
        refusals = rejected.get(device_id, [])
        lag = None if received is None or made is None else round(
            (datetime.fromisoformat(received) - datetime.fromisoformat(made)).total_seconds(), 3)
        out.append({"device_id": device_id, "name": name, "role": role,
                    "enrolled_at": enrolled, "last_seen": seen, "revoked_at": revoked,
                    "entries": top, "highest_seq": top, "last_received_at": received,
                    "lag_s": lag, "waiting": int(waiting.get(device_id, 0)),
                    "rejected": len(refusals),
                    "rejected_in_its_name": in_its_name.get(device_id, 0),
                    "last_rejection": (f"{refusals[-1][0]}: {refusals[-1][1]}"
                                       if refusals else None)})
    return out


async def shifts(storage: RelayStorage, store: str, within: Range = Range()
                 ) -> list[dict[str, Any]]:
    """Shift (Z) reports: per shift opened in the range, its till, cashier and server
    id; opening cash, cash sales, cash refunds, cash in and out, other cash (customer
    payments, expenses); expected cash (by the same rule as the till's view,
    ``peer.views.effects``), counted cash, variance and its reason once closed, and the
    device that closed it (another than its till's: a backoffice or admin device).  Entries
    the relay rejected count for nothing; a sale counts once numbered."""
    await check_store(storage, store)
    cond, args = within.where("opened_at")
    opened = await storage.read(
        "SELECT shift_client_id, device_id, cashier_id, opened_at, closed_at, counted_cash, "
        f"variance_reason FROM tally_shifts WHERE store = ? AND opened_at IS NOT NULL{cond} "
        "ORDER BY opened_at, shift_client_id", (store, *args))
    if not opened:
        return []
    cash: dict[str, dict[str, int]] = defaultdict(dict)
    server_ids: dict[str, str] = {}
    closers: dict[str, str] = {}  # shift -> the device that recorded its close
    ids = [r[0] for r in opened]
    for i in range(0, len(ids), 500):
        chunk = ids[i:i + 500]
        marks = ", ".join("?" * len(chunk))
        for shift, column, amount in await storage.read(
                "SELECT shift_client_id, cash_column, amount FROM tally_cash WHERE store = ? "
                f"AND shift_client_id IN ({marks})", (store, *chunk)):
            cash[shift][column] = int(amount)
        server_ids.update(await storage.read(
            "SELECT client_id, server_id FROM mappings WHERE store = ? AND kind = 'shift' "
            f"AND client_id IN ({marks})", (store, *chunk)))
        closers.update(await storage.read(
            "SELECT m.client_id, e.device_id FROM mappings m JOIN entries e ON e.store = "
            "m.store AND e.client_id = m.server_id WHERE m.store = ? AND m.kind = "
            f"'shift_closed' AND m.client_id IN ({marks})", (store, *chunk)))
    names = {d.device_id: d.name for d in await storage.devices(store)}
    out = []
    for client_id, device_id, cashier, at, closed_at, counted, reason in opened:
        moves = cash[client_id]
        expected = sum(moves.values())
        row: dict[str, Any] = {
            "shift": client_id, "server_id": server_ids.get(client_id),
            "device_id": device_id, "till": names.get(device_id), "cashier_id": cashier,
            "opened_at": at, **{c: moves.get(c, 0) for c in CASH_COLUMNS},
            "expected_cash": expected, "closed_at": None, "counted_cash": None,
            "variance": None, "variance_reason": None, "closed_by": None, "closed_by_name": None}
        if closed_at is not None:
            closer = closers.get(client_id, device_id)
            row.update(closed_at=closed_at, counted_cash=int(counted),
                       variance=int(counted) - expected, variance_reason=reason,
                       closed_by=closer, closed_by_name=names.get(closer))
        out.append(row)
    return out

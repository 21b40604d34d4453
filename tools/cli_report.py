"""``tillsync report ...``: central reports from the relay's data, as a table, JSON
or CSV."""

from __future__ import annotations

import argparse
import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tillsync.relay.server import DB_FILE
from tillsync.tools.cli_common import (
    DB_HELP,
    EPILOG,
    EXIT_BAD_INPUT,
    EXIT_OK,
    CliError,
)


def table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    """Rows as aligned text columns (numbers right-aligned)."""
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    numeric = [all(isinstance(r.get(c), int | float) or r.get(c) is None for r in rows)
               for c in columns]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if n else v.ljust(w)
                         for v, w, n in zip(values, widths, numeric, strict=True)).rstrip()
    return "\n".join([line(columns), *(line(row) for row in cells)])


def as_csv(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().rstrip("\n")


async def report_storage(args: argparse.Namespace) -> Any:
    """The relay's storage named by ``--data`` or ``--db``; never creates a database."""
    from tillsync.relay.storage import open_storage
    if args.db is None:
        if args.data is None:
            raise CliError("report needs --data DIR (SQLite) or --db URL (PostgreSQL)",
                           EXIT_BAD_INPUT)
        if not (Path(args.data) / DB_FILE).exists():
            raise CliError(f"no relay database in {args.data} ({DB_FILE} is missing)",
                           EXIT_BAD_INPUT)
    return await open_storage(args.db, Path(args.data or ".") / DB_FILE, wait=args.db_wait)


def report_out(args: argparse.Namespace, rows: list[dict[str, Any]], columns: Sequence[str],
               empty: str) -> None:
    if args.json:
        print(json.dumps(rows, indent=2, sort_keys=True))
    elif args.csv:
        print(as_csv(rows, columns))
    else:
        print(table(rows, columns) if rows else empty)



async def report_sales(args: argparse.Namespace) -> int:
    from tillsync.relay import reports
    within = reports.Range.parse(args.start, args.end)
    if args.product is not None and args.by != "product":
        raise CliError("--product goes with --by product", EXIT_BAD_INPUT)
    if args.period is not None and args.by not in ("period", "product"):
        raise CliError("--period goes with --by period or --by product", EXIT_BAD_INPUT)
    storage = await report_storage(args)
    money = ("gross", "refunds", "revenue")
    try:
        if args.by == "product":
            rows = await reports.sales_by_product(storage, args.store, within, args.product,
                                                  args.period)
            columns: Sequence[str] = (*(("period",) if args.period else ()), "product_id",
                                      "name", "qty", "refunded_qty", "sales", *money,
                                      "avg_unit_price")
        elif args.by == "cashier":
            rows = await reports.sales_by_cashier(storage, args.store, within)
            columns = ("cashier_id", "name", "sales", *money)
        elif args.by == "till":
            rows = await reports.sales_by_till(storage, args.store, within)
            columns = ("device_id", "name", "sales", *money)
        else:
            rows = await reports.sales_by_period(storage, args.store, args.period or "day",
                                                 within)
            columns = ("period", "sales", *money)
    finally:
        await storage.close()
    report_out(args, rows, columns, "no numbered sales in this range")
    return EXIT_OK


async def report_invoices(args: argparse.Namespace) -> int:
    from tillsync.relay import reports
    within = reports.Range.parse(args.start, args.end)
    storage = await report_storage(args)
    try:
        if args.ticket is not None:
            found = await reports.invoice_of_ticket(storage, args.store, args.ticket)
            if found is None:
                raise CliError(f"ticket {args.ticket} has no invoice number at the relay "
                               "(not synced yet, rejected, or no such ticket)", EXIT_BAD_INPUT)
            rows = [found]
            register = None
        else:
            register = await reports.invoice_register(storage, args.store, within,
                                                      args.limit)
            rows = register["invoices"]
    finally:
        await storage.close()
    columns = ("series", "invoice_no", "ticket", "device_id", "total", "client_created_at",
               "issued_at")
    if register is None or args.csv:
        report_out(args, rows, columns, "")
    elif args.json:
        print(json.dumps(register, indent=2, sort_keys=True))
    else:
        print(table(rows, columns) if rows else "no invoices in this range")
        if args.limit is not None and len(rows) < register["count"]:
            print(f"the {len(rows)} sold last of {register['count']} invoices in this range")
        print(f"{register['count']} invoices in this range, total {register['total']}")
        for series in register["series"]:
            missing = series["missing"]
            print(f"series {series['series']}: {series['issued']} issued, 1..{series['highest']}"
                  + (f", MISSING {missing}" if missing else ", no gap"))
    return EXIT_OK


async def report_state(args: argparse.Namespace) -> int:
    """shifts, stock, alerts, devices: one list each."""
    from tillsync.relay import reports
    within = reports.Range.parse(getattr(args, "start", None), getattr(args, "end", None))
    storage = await report_storage(args)
    try:
        if args.verb == "stock":
            rows = await reports.stock(storage, args.store)
            columns: Sequence[str] = ("product_id", "name", "qty", "reorder_level", "low",
                                      "suggested_price")
        elif args.verb == "shifts":
            rows = await reports.shifts(storage, args.store, within)
            columns = ("opened_at", "till", "cashier_id", "server_id", "opening_cash",
                       "cash_sales", "cash_refunds", "cash_in", "cash_out", "other_cash",
                       "expected_cash", "counted_cash", "variance", "variance_reason")
        elif args.verb == "alerts":
            rows = await reports.alerts(storage, args.store, within)
            columns = ("at", "product_id", "qty", "reorder_level", "client_id")
        else:
            rows = await reports.devices(storage, args.store)
            columns = ("name", "device_id", "role", "last_seen", "entries", "lag_s",
                       "waiting", "rejected", "last_rejection", "rejected_in_its_name",
                       "revoked_at")
    finally:
        await storage.close()
    report_out(args, rows, columns, f"no {args.verb} for store {args.store}")
    return EXIT_OK


async def report_credit(args: argparse.Namespace) -> int:
    """``tillsync report credit``: customers above their credit limit."""
    from tillsync.relay import credit

    storage = await report_storage(args)
    try:
        rows = await credit.over_limit(storage, args.store)
    finally:
        await storage.close()
    report_out(args, rows, ("customer_id", "name", "balance", "credit_limit", "over_by"),
                f"no customer of store {args.store} is above its credit limit")
    return EXIT_OK


def add_report(areas: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``report`` area and its verbs."""
    report = areas.add_parser("report", help="central reports from the relay's data",
                              description="reports computed from what the relay has "
                              "ingested, one store at a time (numbered sales only)",
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    report_verbs = report.add_subparsers(dest="verb", required=True)
    for name, help_text, func in (
            ("sales", "sales by day/week/month, by product, till or cashier", report_sales),
            ("invoices", "the invoice register with its gap check, or one ticket's invoice",
             report_invoices),
            ("shifts", "shift (Z) reports: opening, cash sales, in/out, expected vs counted",
             report_state),
            ("stock", "current stock per product, reorder levels, low ones", report_state),
            ("credit", "customers above their credit limit (tills that sold apart)",
             report_credit),
            ("alerts", "low-stock alerts: which entry took a product below its level",
             report_state),
            ("devices", "every device: last contact, entries held, lag of the latest, entries "
                        "waiting, rejections (of the entries it sent, and of entries in its "
                        "name sent by others), revocation",
             report_state), *((n, h, report_more) for n, h in VERBS)):
        sub = report_verbs.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--data", metavar="DIR", help="the relay's data folder (SQLite)")
        sub.add_argument("--db", metavar="URL", help=DB_HELP)
        sub.add_argument("--db-wait", type=float, default=5.0, metavar="SECONDS",
                         help="how long to keep retrying an unreachable database (default 5)")
        sub.add_argument("--store", required=True, help="store id")
        if name not in ("stock", "devices", "credit", *NO_RANGE):
            sub.add_argument("--from", dest="start", metavar="YYYY-MM-DD",
                             help="first day (UTC; client time for sales)")
            sub.add_argument("--to", dest="end", metavar="YYYY-MM-DD",
                             help="last day, included")
        out = sub.add_mutually_exclusive_group()
        out.add_argument("--json", action="store_true", help="print JSON")
        out.add_argument("--csv", action="store_true", help="print CSV")
        sub.set_defaults(func=func)
        add_more_arguments(sub, name)
        if name == "sales":
            sub.add_argument("--by", choices=("period", "product", "till", "cashier"),
                             default="period",
                             help="group by period (default), product, till or cashier")
            sub.add_argument("--period", choices=("day", "week", "month"),
                             help="with --by period: day (default), week or month; with "
                                  "--by product: a row per period and product")
            sub.add_argument("--product", metavar="ID",
                             help="with --by product: only this product")
        elif name == "invoices":
            sub.add_argument("--ticket", help="only the invoice this provisional ticket became")
            sub.add_argument("--limit", type=int, metavar="N",
                             help="only the N invoices of the range sold last (by the till's "
                                  "sale time; the count, total and gap check still cover all "
                                  "of them)")


# Per verb: the columns of its table and CSV, and what it prints when it finds nothing.
_SHOWN: dict[str, tuple[tuple[str, ...], str]] = {
    "refunds": (("period", "refunds", "amount", "by_method"), "no refunds in this range"),
    "expenses": (("period", "category", "expenses", "amount", "cash"),
                 "no expenses in this range"),
    "cash": (("period", "moves_in", "cash_in", "moves_out", "cash_out", "net"),
             "no cash put in or taken out in this range"),
    "product": (("period", "qty", "refunded_qty", "sales", "gross", "refunds", "revenue",
                 "avg_unit_price"), "no sale or refund of it in this range"),
    "mismatches": (("at", "till", "ticket", "invoice", "client_total", "total", "difference"),
                   "no sale whose total the till got wrong in this range"),
    "held": (("at", "till", "server_id", "amount", "note", "state", "resumed_by"),
             "no held sale in this range"),
    "drafts": (("at", "kind", "server_id", "till", "amount", "note"),
               "no purchase order or journal entry in this range"),
    "waiting": (("at", "kind", "till", "seq", "ticket", "waiting_for", "received_at"),
                "no entry waiting at the relay"),
}


async def report_more(args: argparse.Namespace) -> int:
    """The reports of ``VERBS``."""
    from tillsync.relay import reports, reports_lists, reports_money
    within = reports.Range.parse(getattr(args, "start", None), getattr(args, "end", None))
    storage = await report_storage(args)
    columns, empty = _SHOWN[args.verb]
    try:
        if args.verb == "refunds":
            rows = await reports_money.refunds(storage, args.store, args.period, within)
        elif args.verb == "expenses":
            rows = await reports_money.expenses(storage, args.store, args.period, within)
        elif args.verb == "cash":
            rows = await reports_money.cash_movements(storage, args.store, args.period, within)
        elif args.verb == "product":
            found = await reports_money.product(storage, args.store, args.product,
                                                args.period, within)
        else:
            rows = await reports_lists.listing(storage, args.store, args.verb, within)
    finally:
        await storage.close()
    if args.verb != "product":
        report_out(args, rows, columns, empty)
    elif args.json:
        print(json.dumps(found, indent=2, sort_keys=True))
    else:
        report_out(args, found["breakdown"], columns, empty)
        if not args.csv:
            print(product_summary(found))
    return 0


def product_summary(found: dict[str, Any]) -> str:
    """The line under ``report product``'s table; no average price when nothing sold."""
    average = found["avg_unit_price"]
    return (f"{found['product_id']} ({found['name'] or 'not in the catalogue'}): "
            f"{found['qty']} sold, {found['refunded_qty']} refunded, in {found['sales']} "
            f"sales; gross {found['gross']}, refunds {found['refunds']}, revenue "
            f"{found['revenue']}, average unit price "
            f"{'none (nothing sold)' if average is None else average}")


VERBS = (
    ("refunds", "refunds per day/week/month: count, money returned, per method"),
    ("expenses", "expenses per day/week/month and category: count, amount, paid in cash"),
    ("cash", "cash movements per day/week/month: put in, taken out, net"),
    ("product", "one product's analytics: quantity, gross, refunds, net revenue, average "
                "unit price, per day/week/month"),
    ("mismatches", "numbered sales whose client total differed from the relay's"),
    ("held", "held sales: still held, or the sale that resumed them"),
    ("drafts", "purchase orders and journal entries (drafts, with their server ids)"),
    ("waiting", "entries waiting at the relay for a shift or held sale not arrived yet"),
)
NO_RANGE = ("waiting",)


def add_more_arguments(sub: argparse.ArgumentParser, name: str) -> None:
    """The arguments of one of ``VERBS`` beyond those every report has."""
    if name in ("refunds", "expenses", "cash", "product"):
        sub.add_argument("--period", choices=("day", "week", "month"), default="day",
                         help="group by day (default), ISO week or month")
    if name == "product":
        sub.add_argument("--product", metavar="ID", required=True, help="the product")

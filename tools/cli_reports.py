"""``tillsync report``: how reports are read and printed, and the reports of money that
is not a sale (refunds, expenses, cash movements), one product's analytics, and the
lists (total mismatches, held sales, drafts, waiting entries).  ``tools.cli`` registers
the sales, invoices, shifts, stock, alerts and devices reports and uses the helpers
here; ``VERBS`` and ``add_arguments`` are the rest of the area."""

from __future__ import annotations

import argparse
import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tillsync.relay.server import DB_FILE
from tillsync.tools.cli_ops import EXIT_BAD_INPUT, OpsError


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
            raise OpsError("report needs --data DIR (SQLite) or --db URL (PostgreSQL)",
                           EXIT_BAD_INPUT)
        if not (Path(args.data) / DB_FILE).exists():
            raise OpsError(f"no relay database in {args.data} ({DB_FILE} is missing)",
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
            print(f"{found['product_id']} ({found['name'] or 'not in the catalogue'}): "
                  f"{found['qty']} sold, {found['refunded_qty']} refunded, in "
                  f"{found['sales']} sales; gross {found['gross']}, refunds "
                  f"{found['refunds']}, revenue {found['revenue']}, average unit price "
                  f"{found['avg_unit_price']}")
    return 0


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


def add_arguments(sub: argparse.ArgumentParser, name: str) -> None:
    """The arguments of one of ``VERBS`` beyond those every report has."""
    if name in ("refunds", "expenses", "cash", "product"):
        sub.add_argument("--period", choices=("day", "week", "month"), default="day",
                         help="group by day (default), ISO week or month")
    if name == "product":
        sub.add_argument("--product", metavar="ID", required=True, help="the product")

"""Benchmark of the relay's reports on a year of a busy shop.

    python -m tillsync.tools.bench_reports                 # 1,000,000 sales
    python -m tillsync.tools.bench_reports --sales 100000 --json
    python -m tillsync.tools.bench_reports --pg postgresql://postgres@127.0.0.1/postgres

What it does:

1. makes a relay database (SQLite, the default backend) with ``--sales`` numbered
   sales over 365 days from 3 tills, one shift per till and day, 1-3 lines each from
   200 products (one in four weighed), written straight into the relay's tables in bulk
   (``executemany``): the ``entries`` rows carry real msgpack bodies but placeholder
   hashes and signatures, since reports never check them (ingest does; its speed is
   ``tools.bench_relay``'s subject), and the running totals ingest keeps beside them
   (``relay.tallies.Tallies``, the code ingest runs, written in one go at the end);
2. times each report (``relay.reports``, as ``tillsync report`` and the HTTP API run
   them) over the whole year and over one month, best of ``--repeat`` runs; the
   invoice register as the dashboard asks for it (the latest 100 rows and the gap
   check) and, without a target, every row of it (an export);
3. with ``--pg URL``, the same reports on PostgreSQL: the same year copied into a
   scratch database made (and dropped) on that server;
4. the baseline, in the same run: one hand-written SQL aggregate over the same
   database (revenue per day from the invoice register), the floor any report reading
   the raw rows stands on.

Target: every report within 50 ms on this machine, whatever the size of the history.
Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import msgpack

from tillsync.relay import reports
from tillsync.relay.storage import RelayStorage
from tillsync.relay.storage.sqlite import SQLiteStorage
from tillsync.relay.tallies import Tallies
from tillsync.tools.workload import machine

STORE = "bench-shop"
TILLS = 3
PRODUCTS = 200
TARGET_MS = 50.0


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def fill(path: Path, sales: int, seed: int = 7) -> None:
    """``sales`` numbered sales in the relay database at ``path`` (already created)."""
    rng = random.Random(seed)
    start = datetime(2026, 1, 1, 8, tzinfo=UTC)
    db = sqlite3.connect(path)
    db.execute("PRAGMA synchronous=OFF")
    devices = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(TILLS)]
    for i, device in enumerate(devices):
        db.execute("INSERT INTO devices (store, device_id, name, public_key, role, enrolled_at, "
                   "last_seen) VALUES (?, ?, ?, ?, 'till', ?, ?)",
                   (STORE, device, f"Till {i + 1}", bytes(32), start.isoformat(),
                    start.isoformat()))
    prices = {f"p{n:03d}": rng.randint(50, 3000) for n in range(PRODUCTS)}
    weighed = {p for p in prices if rng.random() < 0.25}
    seq = dict.fromkeys(devices, 0)
    per_day = sales / 365
    entries: list[tuple[Any, ...]] = []
    invoices: list[tuple[Any, ...]] = []
    shifts: dict[tuple[str, int], str] = {}
    filler = bytes(32)
    tallies = Tallies()

    def flush() -> None:
        db.executemany("INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       entries)
        db.executemany("INSERT INTO invoices VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", invoices)
        db.commit()
        entries.clear()
        invoices.clear()

    for n in range(sales):
        day = min(364, int(n / per_day))
        device = devices[n % TILLS]
        at = (start + timedelta(days=day, seconds=(n % 40_000))).isoformat(
            timespec="milliseconds").replace("+00:00", "Z")
        shift = shifts.get((device, day))
        if shift is None:
            shift = shifts[(device, day)] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            seq[device] += 1
            opening = {"cashier_id": f"c{n % 4}", "opening_cash": 10_000}
            entries.append((STORE, device, seq[device], shift, filler, "shift_open", at, None,
                            msgpack.packb(opening), bytes(64), filler, at))
            tallies.add("shift_open", shift, device, at, opening)
        lines = []
        total = 0
        for pid in rng.sample(sorted(prices), rng.randint(1, 3)):
            qty: int | str = (f"{rng.randint(1, 2000) / 1000:.3f}" if pid in weighed
                              else rng.randint(1, 3))
            amount = int(round(float(qty) * prices[pid]))
            total += amount
            lines.append({"product_id": pid, "qty": qty, "unit_price": prices[pid]})
        client_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        seq[device] += 1
        ticket = f"TILL{devices.index(device) + 1}-{seq[device]:07d}"
        sale = {"lines": lines, "shift_client_id": shift,
                "payments": [{"method": "cash", "amount": total}]}
        entries.append((STORE, device, seq[device], client_id, filler, "sale", at, ticket,
                        msgpack.packb(sale), bytes(64), filler, at))
        tallies.add("sale", client_id, device, at, sale, total, "INV")
        invoices.append((STORE, "INV", n + 1, client_id, device, ticket, total, at, at,
                         seq[device]))
        if len(entries) >= 20_000:
            flush()
            progress(f"  {n + 1:,} / {sales:,} sales written")
    flush()
    for sql, rows in tallies.writes(STORE):  # what ingest adds, batch by batch
        db.executemany(sql, rows)
    db.commit()
    db.close()


async def timed(run: Callable[[], Awaitable[Any]], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        await run()
        best = min(best, time.perf_counter() - t0)
    return best * 1000


# The tables the reports read, copied from SQLite to PostgreSQL for --pg.
COPIED = ("devices", "entries", "invoices", "tally_sales", "tally_products", "tally_shifts",
          "tally_cash", "tally_series")


async def copy_to_postgres(path: Path, url: str) -> None:
    """The SQLite database's report tables into the (migrated, empty) database at url."""
    import asyncpg

    db = sqlite3.connect(path)
    conn = await asyncpg.connect(url)
    try:
        for table in COPIED:
            columns = [r[1] for r in db.execute(f"PRAGMA table_info({table})")]
            cursor = db.execute(f"SELECT {', '.join(columns)} FROM {table}")
            while rows := cursor.fetchmany(50_000):
                await conn.copy_records_to_table(table, records=rows, columns=columns)
            progress(f"  copied {table} to PostgreSQL")
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
        db.close()


async def measure(storage: RelayStorage, repeat: int) -> list[dict[str, Any]]:
    year, month = reports.Range(), reports.Range.parse("2026-06-01", "2026-06-30")
    cases: list[tuple[str, Callable[[reports.Range], Awaitable[Any]]]] = [
        ("sales by day", lambda r: reports.sales_by_period(storage, STORE, "day", r)),
        ("sales by month", lambda r: reports.sales_by_period(storage, STORE, "month", r)),
        ("sales by product", lambda r: reports.sales_by_product(storage, STORE, r)),
        ("sales by till", lambda r: reports.sales_by_till(storage, STORE, r)),
        ("sales by cashier", lambda r: reports.sales_by_cashier(storage, STORE, r)),
        ("invoice register (latest 100, gap check)",
         lambda r: reports.invoice_register(storage, STORE, r, limit=100)),
        ("shifts (Z)", lambda r: reports.shifts(storage, STORE, r)),
        ("stock", lambda r: reports.stock(storage, STORE)),
        ("alerts", lambda r: reports.alerts(storage, STORE, r)),
        ("devices", lambda r: reports.devices(storage, STORE)),
        # The till's first sale of the year: the oldest row, the far end of any scan.
        ("invoice of a ticket", lambda r: reports.invoice_of_ticket(storage, STORE,
                                                                     "TILL1-0000002")),
    ]
    out = []
    try:
        for name, run in cases:
            progress(f"  timing {name}")
            out.append({"report": name,
                        "year_ms": round(await timed(partial(run, year), repeat), 1),
                        "month_ms": round(await timed(partial(run, month), repeat), 1)})
        progress("  timing the invoice register's every row (an export)")
        out.append({"report": "export: invoice register, every row",
                    "year_ms": round(await timed(
                        lambda: reports.invoice_register(storage, STORE, year), repeat), 1),
                    "month_ms": round(await timed(
                        lambda: reports.invoice_register(storage, STORE, month), repeat), 1),
                    "no_target": True})
        baseline = ("SELECT substr(client_created_at, 1, 10), count(*), sum(total) "
                    "FROM invoices WHERE store = ? GROUP BY 1")
        out.append({"report": "baseline: one SQL aggregate (revenue per day)",
                    "year_ms": round(await timed(lambda: storage.read(baseline, (STORE,)),
                                                 repeat), 1),
                    "month_ms": None, "no_target": True})
    finally:
        await storage.close()
    return out


async def measure_postgres(path: Path, admin: str, repeat: int) -> list[dict[str, Any]]:
    from tillsync.relay.storage.postgres import PostgresStorage
    from tillsync.tools.bench_relay import create_database, drop_database

    url = await create_database(admin, "reports")
    try:
        await (await PostgresStorage.open(url)).close()  # the relay's schema
        await copy_to_postgres(path, url)
        return await measure(await PostgresStorage.open(url), repeat)
    finally:
        await drop_database(admin, url)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tillsync-bench-reports-") as tmp:
        path = Path(tmp) / "relay.db"
        await (await SQLiteStorage.open(path)).close()  # the relay's schema
        progress(f"writing {args.sales:,} sales")
        t0 = time.perf_counter()
        fill(path, args.sales)
        written = time.perf_counter() - t0
        progress("timing the reports on SQLite")
        rows = await measure(await SQLiteStorage.open(path), args.repeat)
        pg_rows = None
        if args.pg:
            progress("copying the year to a scratch database on the --pg server")
            pg_rows = await measure_postgres(path, args.pg, args.repeat)
    return {"machine": machine(), "sales": args.sales, "write_s": round(written, 1),
            "target_ms": TARGET_MS, "reports": rows, "postgres": pg_rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sales", type=int, default=1_000_000, help="sales in the year")
    parser.add_argument("--repeat", type=int, default=3, help="runs per report (best kept)")
    parser.add_argument("--pg", metavar="URL", help="also time the reports on PostgreSQL: a "
                        "scratch database is made on this server (a URL of a database to "
                        "connect to first, e.g. postgresql://postgres@127.0.0.1:5432/postgres), "
                        "filled with a copy of the same year, dropped at the end")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = parser.parse_args(argv)
    if args.sales < 1:
        parser.error("--sales must be at least 1")
    result = asyncio.run(main_async(args))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    m = result["machine"]
    print(f"{result['sales']:,} sales in a relay database (SQLite), written in "
          f"{result['write_s']} s; {m['cores']} cores, {m['cpu']}")
    for backend, rows in (("SQLite", result["reports"]), ("PostgreSQL", result["postgres"])):
        if rows is None:
            continue
        print(f"{backend + ': report':<48}{'whole year':>12}{'one month':>12}   "
              f"target {TARGET_MS:.0f} ms")
        for row in rows:
            month = "" if row["month_ms"] is None else f"{row['month_ms']:.1f} ms"
            flag = "" if row.get("no_target") else (
                "met" if max(row["year_ms"], row["month_ms"]) <= TARGET_MS else "NOT met")
            print(f"{row['report']:<48}{row['year_ms']:>9.1f} ms{month:>12}   {flag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The benchmark's command line: arguments, the runs in order, the report."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from tillsync.peer.client import PUSH_WINDOW
from tillsync.peer.sync.frames import MAX_BATCH
from tillsync.tools.bench_relay.baseline import bench_baseline
from tillsync.tools.bench_relay.load import generate, till_specs
from tillsync.tools.bench_relay.relay_run import bench_relay
from tillsync.tools.bench_relay.report import (
    RELAY_RUNS,
    TARGET_CPU_RATIO,
    TARGET_CPU_US,
    TARGET_RATIO,
    TARGET_SALES_PER_SECOND,
    render,
)
from tillsync.tools.workload import (
    machine,
    positive_int,
    progress,
)

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"

# -- main ----------------------------------------------------------------------------------


def _batch(text: str) -> int:
    value = positive_int(text)
    if value > MAX_BATCH:
        raise argparse.ArgumentTypeError(f"at most {MAX_BATCH} entries fit in a frame")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tillsync.tools.bench_relay",
        description="Benchmark the relay on this machine: sales/s ingested from many tills "
        "at once, with a naive one-request-per-sale REST back end as the baseline.",
        epilog="Progress goes to stderr. A default run takes about 1-3 minutes on 2 cores.",
    )
    p.add_argument("--tills", type=positive_int, default=20, help="simulated tills "
                   "(default: %(default)s)")
    p.add_argument("--stores", type=positive_int, default=2, help="stores the tills are spread "
                   "over (default: %(default)s)")
    p.add_argument("--sales-per-till", type=positive_int, default=5_000, metavar="N",
                   help="sales each till pushes to the relay (default: %(default)s)")
    p.add_argument("--batch", type=_batch, default=500, metavar="N",
                   help=f"entries per frame, at most {MAX_BATCH} (default: %(default)s)")
    p.add_argument("--inflight", type=positive_int, default=PUSH_WINDOW, metavar="N",
                   help="frames a till sends before waiting for an answer (default: "
                   "%(default)s, as `peer sync` does)")
    p.add_argument("--baseline-sales-per-till", type=positive_int, default=500, metavar="N",
                   help="sales each till POSTs to the baseline (default: %(default)s)")
    p.add_argument("--no-receipts", action="store_true",
                   help="stop each till once its batches are ingested, without waiting for "
                   "every receipt of its store")
    p.add_argument("--skip", action="append", choices=("relay", "postgres", "baseline"),
                   default=[], help="leave out a step (repeatable): relay (on SQLite), "
                   "postgres (both PostgreSQL runs), baseline")
    p.add_argument("--pg", metavar="URL", default=DEFAULT_PG,
                   help="PostgreSQL server for the PostgreSQL runs; a fresh database is made "
                   "there and dropped after each (default: %(default)s)")
    p.add_argument("--pg-workers", type=positive_int, default=2, metavar="N",
                   help="relay processes of the second PostgreSQL run (default: %(default)s)")
    p.add_argument("--seed", type=int, default=1, help="seed of the generated workload")
    p.add_argument("--keep", metavar="DIR", type=Path,
                   help="write everything to DIR (new or empty) and keep it, instead of a "
                   "temporary directory that is removed")
    p.add_argument("--json", action="store_true",
                   help="print one machine-readable JSON document instead of the table")
    return p


async def create_database(admin: str, name: str) -> str:
    """A fresh database on the server of ``admin``; returns its URL."""
    import asyncpg

    from tillsync.relay.storage.postgres import with_database

    database = f"tillsync_bench_{name}_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'CREATE DATABASE "{database}"')
        version = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    _PG_VERSION[0] = str(version).split()[0]
    return with_database(admin, database)


_PG_VERSION = [""]


async def drop_database(admin: str, url: str) -> None:
    import asyncpg

    database = url.rsplit("/", 1)[1].split("?")[0]
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    finally:
        await conn.close()


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    if args.stores > args.tills:
        raise SystemExit("--stores cannot exceed --tills")
    skip = set(args.skip)
    specs = till_specs(args.tills, args.stores, args.sales_per_till, args.batch, args.seed)
    baseline_sales = 0 if "baseline" in skip else args.baseline_sales_per_till
    progress(f"generating {args.tills} tills x {args.sales_per_till:,} sealed sales "
             f"(+ {baseline_sales:,} baseline requests each), not timed")
    started = time.perf_counter()
    loads = generate(specs, baseline_sales)
    generated = time.perf_counter() - started

    async def steps() -> dict[str, Any]:
        out: dict[str, Any] = {}
        if "relay" not in skip:
            out["relay"] = await bench_relay(root, loads, args)
        if "postgres" not in skip:
            for key, workers in (("relay_pg", 1), ("relay_pg_workers", args.pg_workers)):
                db = await create_database(args.pg, key)
                try:
                    out[key] = await bench_relay(root, loads, args, db, workers,
                                                 key.replace("_", "-"))
                finally:
                    await drop_database(args.pg, db)
        if "baseline" not in skip:
            out["baseline"] = await bench_baseline(root, loads)
        return out

    results = asyncio.run(steps())
    relay, baseline = results.get("relay"), results.get("baseline")
    rate = relay["sales_per_second"] if relay else None
    ratio = rate / baseline["sales_per_second"] if rate and baseline else None
    cpu = relay["relay_cpu_us_per_sale"] if relay else None
    base_cpu = baseline["server_cpu_us_per_sale"] if baseline else None
    cpu_ratio = cpu / base_cpu if cpu is not None and base_cpu else None
    report: dict[str, Any] = {
        "machine": machine(),
        "websockets": _version("websockets"),
        "msgpack": _version("msgpack"),
        "asyncpg": _version("asyncpg"),
        "postgresql": _PG_VERSION[0] or None,
        "directory": str(root),
        "kept": args.keep is not None,
        "workload": {"tills": args.tills, "stores": args.stores,
                     "sales_per_till": args.sales_per_till,
                     "sales": args.tills * args.sales_per_till,
                     "baseline_sales_per_till": baseline_sales,
                     "batch": args.batch, "inflight": args.inflight, "seed": args.seed,
                     "generate_seconds": round(generated, 2),
                     "frame_bytes": sum(load.size for load in loads)},
        **results,
        "targets": {
            "sales_per_second_min": TARGET_SALES_PER_SECOND, "ratio_min": TARGET_RATIO,
            "sales_per_second": rate,
            "rate_met": None if rate is None else rate >= TARGET_SALES_PER_SECOND,
            "ratio": None if ratio is None else round(ratio, 2),
            "ratio_met": None if ratio is None else ratio >= TARGET_RATIO,
            "cpu_us_per_sale_max": TARGET_CPU_US, "cpu_ratio_max": TARGET_CPU_RATIO,
            "relay_cpu_us_per_sale": cpu, "baseline_cpu_us_per_sale": base_cpu,
            "cpu_ratio": None if cpu_ratio is None else round(cpu_ratio, 3),
            "cpu_met": None if cpu is None else cpu <= TARGET_CPU_US,
            "cpu_ratio_met": None if cpu_ratio is None else cpu_ratio <= TARGET_CPU_RATIO,
        },
    }
    report["_render"] = render(report)
    return report


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.keep is not None:
        keep: Path = args.keep
        if keep.exists() and (not keep.is_dir() or any(keep.iterdir())):
            print(f"--keep {keep}: give a new or empty directory", file=sys.stderr)
            return 2
        keep.mkdir(parents=True, exist_ok=True)
        report = run(args, keep.resolve())
    else:
        with tempfile.TemporaryDirectory(prefix="tillsync-bench-relay-") as tmp:
            report = run(args, Path(tmp))
    text = report.pop("_render")
    print(json.dumps(report, indent=2) if args.json else text)
    checks = [report[k]["check"]["ok"] for k in (*RELAY_RUNS, "baseline") if k in report]
    return 0 if all(checks) else 1


if __name__ == "__main__":
    sys.exit(main())

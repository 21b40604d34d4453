"""Benchmark of the relay's commit path alone, in one process: no websockets, no load
generator, no prepare worker, so its figures move by a few percent between runs where
``tools.bench_relay``'s swing by a third on a busy 2-core machine.

    python -m tillsync.tools.bench_ingest               # 10 tills x 4,000 sales
    python -m tillsync.tools.bench_ingest --json

It builds the same signed sales as ``tools.bench_relay`` (a shift_open, then sales of 1-5
lines), enrolls the tills in a relay on a fresh SQLite database, runs ``prepare`` on every
batch before any timing, then times ``Relay._commit``, the relay's group commit, on
commits of one batch from each till (each commit: one transaction, every decision, every
row, one fsync).  Per sale it reports the wall time and the CPU of the event loop's
thread (deciding, receipts) and of the other threads (SQLite's); the first two commits
(warm-up) are left out.  What it does not measure: receiving frames, the prepare
worker, pushing receipts; ``tools.bench_relay`` has those.

A tool for comparing changes to ``relay/ingest.py`` and the storage: run it before and
after, a few times each, interleaved.  ``--without invoices`` (receipts, tallies; may be
repeated) is an experiment, not a relay: those rows are not written at all, so a run
shows at most what a cheaper way of storing them could save.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tillsync.peer.sync.frames import decode, entry_from_wire
from tillsync.relay.ingest import Batch
from tillsync.relay.prepare import prepare
from tillsync.relay.server import Relay, _Job, code_hash
from tillsync.relay.storage import sqlite as sqlite_storage
from tillsync.tools.bench_relay import build_till, device_key, till_specs
from tillsync.tools.workload import machine, positive_int, products_for_sales, progress


async def bench(root: Path, tills: int, sales: int, batch: int, seed: int) -> dict[str, Any]:
    specs = till_specs(tills, 1, sales, batch, seed)
    progress(f"generating {tills} tills x {sales:,} sales")
    loads = [build_till(spec, 0) for spec in specs]
    relay = await Relay.open(root)
    try:
        keys = {}
        for spec in specs:
            code = await relay.new_code(spec.store, spec.name)
            row = await relay.storage.enroll(code_hash(code), spec.device_id, spec.name,
                                             device_key(spec.private_key).public_bytes,
                                             "2025-01-01T00:00:00Z")
            assert not isinstance(row, str), row
            keys[spec.device_id] = row.public_key
        catalogue = products_for_sales()

        class Hub:  # what _commit reads of a StoreHub
            store = specs[0].store

            @staticmethod
            def product(product_id: str) -> Any:
                return catalogue.get(product_id)

        store_key = await relay.store_key(Hub.store)
        frames = [[[entry_from_wire(w) for w in decode(f)["entries"]] for f in load.frames]
                  for load in loads]
        commits = max(len(f) for f in frames)
        jobs = [[_Job(Hub(),  # type: ignore[arg-type]
                      Batch(Hub.store, f[i], keys, Hub.product, store_key, prepare(f[i])),
                      asyncio.get_running_loop().create_future())
                 for f in frames if i < len(f)] for i in range(commits)]
        wall = loop_cpu = other_cpu = 0.0
        timed = 0
        per_commit: list[tuple[float, int]] = []  # (wall, sales) of each timed commit
        for i, commit in enumerate(jobs):
            w0, t0, p0 = time.perf_counter(), time.thread_time(), time.process_time()
            results = await relay._commit(commit, [0])
            w, t, p = time.perf_counter() - w0, time.thread_time() - t0, \
                time.process_time() - p0
            rejected = sum(r.get("status") == "rejected" for res in results
                           for r in res.receipts)
            if rejected:
                raise RuntimeError(f"commit {i}: {rejected} entries rejected")
            count = sum(len(job.batch.entries) for job in commit)
            if i >= 2:
                wall, loop_cpu, other_cpu, timed = wall + w, loop_cpu + t, \
                    other_cpu + p - t, timed + count
                per_commit.append((w, count))
            progress(f"commit {i + 1}/{commits}: {count} sales, {1e6 * w / count:.1f} us a "
                     "sale")
    finally:
        await relay.close()
    if not timed:
        raise RuntimeError("too few commits to time: raise --sales-per-till")
    # Full commits only: the last one holds the few sales left over, and its fsync alone
    # would make it look slow.
    full = [c for c in per_commit if c[1] == max(n for _, n in per_commit)]
    tenth = max(1, len(full) // 10)
    return {"machine": machine(), "tills": tills, "sales_per_till": sales, "batch": batch,
            "sales_timed": timed, "sales_per_second": round(timed / wall),
            "us_per_sale": {"wall": round(1e6 * wall / timed, 1),
                            "event_loop_cpu": round(1e6 * loop_cpu / timed, 1),
                            "other_threads_cpu": round(1e6 * other_cpu / timed, 1)},
            # Does a commit slow down as the history grows?  Wall per sale over the
            # first and the last tenth of the timed commits.
            "wall_us_per_sale_first_tenth": _wall_per_sale(full[:tenth]),
            "wall_us_per_sale_last_tenth": _wall_per_sale(full[-tenth:])}


# What ``--without`` leaves out: the storage calls that write those rows.
LEAVE_OUT = {"receipts": "insert_receipts", "invoices": "add_invoices",
             "tallies": "add_tallies"}


def leave_out(kinds: list[str]) -> None:
    """Make the SQLite storage skip writing these kinds of rows, in this process."""
    async def skipped(*_args: Any) -> None:
        return None

    for kind in kinds:
        setattr(sqlite_storage._Txn, LEAVE_OUT[kind], skipped)


def _wall_per_sale(commits: list[tuple[float, int]]) -> float:
    return round(1e6 * sum(w for w, _ in commits) / sum(n for _, n in commits), 1)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tillsync.tools.bench_ingest",
        description="Time the relay's group commit alone (SQLite, in one process).")
    p.add_argument("--tills", type=positive_int, default=10,
                   help="tills, one batch of each per commit (default 10)")
    p.add_argument("--sales-per-till", type=positive_int, default=4_000, metavar="N",
                   help="sales each till sends (default 4,000)")
    p.add_argument("--batch", type=positive_int, default=500, metavar="N",
                   help="entries per batch (default 500)")
    p.add_argument("--seed", type=int, default=1, help="seed of the generated workload")
    p.add_argument("--without", action="append", choices=sorted(LEAVE_OUT), default=[],
                   help="an experiment: do not write these rows at all (repeatable), to "
                        "see what storing them costs; the database is then no relay's")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    leave_out(args.without)
    with tempfile.TemporaryDirectory(prefix="tillsync-bench-ingest-") as tmp:
        report = asyncio.run(bench(Path(tmp), args.tills, args.sales_per_till, args.batch,
                                   args.seed))
    report["without"] = sorted(set(args.without))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        us = report["us_per_sale"]
        print(f"relay group commit on SQLite, {report['machine']['cpu']}, "
              f"{report['machine']['cores']} cores: {report['tills']} batches of "
              f"{report['batch']} a commit, {report['sales_timed']:,} sales timed"
              + (f" (without the rows of {', '.join(report['without'])})"
                 if report["without"] else "") + "\n"
              f"  {report['sales_per_second']:,} sales/s; per sale: wall {us['wall']} us, "
              f"event loop CPU {us['event_loop_cpu']} us, other threads (SQLite) CPU "
              f"{us['other_threads_cpu']} us\n"
              f"  wall per sale, first tenth of the commits -> last tenth: "
              f"{report['wall_us_per_sale_first_tenth']} -> "
              f"{report['wall_us_per_sale_last_tenth']} us (as the history grows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

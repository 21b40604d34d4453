"""One timed run of the relay: set-up (enrollment, master data), the tills pushing their
frames, and the check of the relay's database afterwards."""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import sys
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
from websockets.asyncio.client import connect

from tillsync.peer.client import enroll, init_enrolled, sync_once
from tillsync.peer.store import Till
from tillsync.peer.sync.engine import (
    ClientLink,
    Ingested,
    LinkFailed,
    Ready,
    ReceiptsReceived,
    RemoteError,
)
from tillsync.peer.sync.frames import MAX_FRAME
from tillsync.relay.server import DB_FILE, Relay
from tillsync.tools.bench_relay.load import CASHIER, TillLoad, TillSpec, device_key
from tillsync.tools.bench_relay.procs import Server, cpu_delta, postgres_cpu, us_per_sale
from tillsync.tools.workload import (
    percentile,
    products_for_sales,
    progress,
)

RUN_TIMEOUT = 900.0
RECEIPTS_TIMEOUT = 300.0

# -- setup: enrollment and master data -----------------------------------------------------


async def make_codes(data: Path, specs: Sequence[TillSpec], stores: Sequence[str],
                     db: str | None = None
                     ) -> tuple[dict[int, str], dict[str, str], dict[str, bytes]]:
    relay = await Relay.open(data, db)
    try:
        codes = {s.index: await relay.new_code(s.store, s.name) for s in specs}
        office = {store: await relay.new_code(store, f"Back office {store}", "backoffice")
                  for store in stores}
        keys = {store: (await relay.store_key(store)).public_bytes for store in stores}
        return codes, office, keys
    finally:
        await relay.close()


async def setup_store(root: Path, url: str, store: str, code: str) -> None:
    """A back-office device enrolls, puts the catalogue and a cashier, and syncs them."""
    path = root / f"office-{store}"  # root: this run's own folder
    await init_enrolled(path, name=f"Office {store}", url=url, code=code, series="OFFICE")
    async with await Till.open(path) as till:
        await asyncio.gather(*(till.put("products", pid, body)
                               for pid, body in products_for_sales().items()))
        await till.put("cashiers", CASHIER, {"name": "Ann", "role": "cashier", "pin": "1234"})
        report = await sync_once(till, url)
        if report.errors:
            raise RuntimeError(f"store {store}: master data sync failed: {report.errors}")


# -- 1: the relay --------------------------------------------------------------------------


@dataclass
class TillRun:
    latencies_ms: list[float] = field(default_factory=list)
    connected_at: float = 0.0
    ingested_at: float = 0.0
    receipts_at: float = 0.0
    receipts: int = 0
    receipt_frames: int = 0


async def drive_till(run: TillRun, load: TillLoad, url: str, relay_key: bytes, inflight: int,
                     store_entries: int, t0: float, wait_receipts: bool) -> TillRun:
    spec = load.spec
    link = ClientLink(store=spec.store, device=spec.device_id, key=device_key(spec.private_key),
                      nonce=os.urandom(32), relay_key=relay_key)
    sent_at: deque[float] = deque()
    next_frame = acked = 0
    last_receipt = 0
    total = len(load.frames)
    async with connect(url, max_size=MAX_FRAME, compression=None) as ws:
        link.start()
        for out in link.data_to_send():
            await ws.send(out)
        async for frame in ws:
            link.receive_data(frame)
            for event in link.events_received():
                if isinstance(event, Ready):
                    run.connected_at = time.perf_counter() - t0
                    if event.heads.get(spec.device_id, 0):
                        raise RuntimeError(f"{spec.name}: the relay already holds entries")
                    while next_frame < min(inflight, total):
                        sent_at.append(time.perf_counter())
                        await ws.send(load.frames[next_frame])
                        next_frame += 1
                elif isinstance(event, Ingested):
                    now = time.perf_counter()
                    run.latencies_ms.append((now - sent_at.popleft()) * 1e3)
                    if event.count != load.counts[acked] or \
                            event.heads.get(spec.device_id) != load.heads[acked]:
                        raise RuntimeError(
                            f"{spec.name}: batch {acked + 1} answered count {event.count}, "
                            f"head {event.heads.get(spec.device_id)}; expected "
                            f"{load.counts[acked]}, {load.heads[acked]}")
                    acked += 1
                    if next_frame < total:
                        sent_at.append(time.perf_counter())
                        await ws.send(load.frames[next_frame])
                        next_frame += 1
                    elif acked == total:
                        run.ingested_at = now - t0
                elif isinstance(event, ReceiptsReceived):
                    run.receipts += len(event.receipts)
                    run.receipt_frames += 1
                    if event.receipts:
                        last_receipt = max(last_receipt, event.receipts[-1]["server_seq"])
                    if last_receipt >= store_entries and not run.receipts_at:
                        run.receipts_at = time.perf_counter() - t0
                elif isinstance(event, RemoteError | LinkFailed):
                    raise RuntimeError(f"{spec.name}: relay error {event.code}: {event.message}")
            for out in link.data_to_send():
                await ws.send(out)
            if acked == total and (run.receipts_at or not wait_receipts):
                break
    return run


def summarise_ms(samples: Sequence[float]) -> dict[str, float]:
    ordered = sorted(samples)
    if not ordered:
        return {"n": 0, "p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0, "mean": 0.0}
    return {"n": len(ordered), "p50": round(percentile(ordered, 50), 2),
            "p90": round(percentile(ordered, 90), 2), "p99": round(percentile(ordered, 99), 2),
            "max": round(ordered[-1], 2), "mean": round(statistics.fmean(ordered), 2)}


class _Rows:
    """Reads of the relay's database, SQLite file or PostgreSQL, with ``?`` marks."""

    def __init__(self, path: Path, db: str | None) -> None:
        self.path, self.db = path, db
        self._sqlite: sqlite3.Connection | None = None
        self._pg: Any = None

    async def __aenter__(self) -> _Rows:
        if self.db:
            import asyncpg

            self._pg = await asyncpg.connect(self.db)
        else:
            self._sqlite = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._pg is not None:
            await self._pg.close()
        if self._sqlite is not None:
            self._sqlite.close()

    async def __call__(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if self._sqlite is not None:
            return [tuple(r) for r in self._sqlite.execute(sql, args).fetchall()]
        parts = sql.split("?")
        numbered = parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], 1))
        return [tuple(r) for r in await self._pg.fetch(numbered, *args)]


async def check_relay_db(path: Path, loads: Sequence[TillLoad], db: str | None = None
                         ) -> dict[str, Any]:
    """Invoice numbering and receipts, read from the stopped relay's database (the
    SQLite file at ``path``, or the PostgreSQL database ``db``)."""
    expected: Counter[str] = Counter()
    entries: Counter[str] = Counter()
    for load in loads:
        expected[load.spec.store] += load.sales
        entries[load.spec.store] += load.entries
    problems: list[str] = []
    series: list[dict[str, Any]] = []
    async with _Rows(path, db) as query:
        for store, want in sorted(expected.items()):
            rows = await query(
                "SELECT series, count(*), count(DISTINCT invoice_no), min(invoice_no), "
                "max(invoice_no), count(DISTINCT client_id) FROM invoices WHERE store = ? "
                "GROUP BY series", (store,))
            got = sum(r[1] for r in rows)
            if got != want:
                problems.append(f"{store}: {got} invoices for {want} sales")
            for name, n, distinct, low, high, clients in rows:
                gapless = n == distinct == clients and low == 1 and high == n
                if not gapless:
                    problems.append(f"{store} {name}: {n} invoices, numbers {low}..{high}, "
                                    f"{distinct} distinct, {clients} distinct sales")
                series.append({"store": store, "series": name, "invoices": n,
                               "first": low, "last": high, "gapless": gapless})
            stored = (await query("SELECT count(*) FROM entries WHERE store = ?",
                                  (store,)))[0][0]
            if stored != entries[store]:
                problems.append(f"{store}: {stored} entries stored, {entries[store]} sent")
        statuses: Counter[str] = Counter()
        warnings: Counter[str] = Counter()
        for (data,) in await query("SELECT data FROM receipts"):
            receipt = msgpack.unpackb(data, raw=False)
            statuses[receipt["status"]] += 1
            for warning in receipt.get("warnings", []):
                warnings[warning["code"]] += 1
        rejected = (await query("SELECT count(*) FROM rejected"))[0][0]
    total_entries = sum(entries.values())
    if statuses.get("accepted", 0) != total_entries:
        problems.append(f"receipts: {dict(statuses)} for {total_entries} entries")
    if rejected:
        problems.append(f"{rejected} rejected entries")
    # Low-stock alerts are the relay doing its job (the load sells stock down, and a
    # product's first movement below its level warns too); any other
    # warning (a total that does not add up, say) means the load or the relay is wrong.
    unexpected = {code: n for code, n in warnings.items() if code != "low_stock"}
    if unexpected:
        problems.append(f"receipt warnings: {unexpected}")
    return {"ok": not problems, "series": series, "receipts": dict(statuses),
            "warnings": dict(warnings), "rejected": rejected, "problems": problems}


async def bench_relay(root: Path, loads: Sequence[TillLoad], args: argparse.Namespace,
                      db: str | None = None, workers: int = 1, name: str = "relay"
                      ) -> dict[str, Any]:
    """One relay run: SQLite in the relay's folder, or the PostgreSQL database ``db``
    with ``workers`` relay processes sharing the port."""
    data = root / name
    stores = sorted({load.spec.store for load in loads})
    specs = [load.spec for load in loads]
    progress(f"{name}: one-time codes for {len(specs)} tills and {len(stores)} back offices")
    codes, office_codes, store_keys = await make_codes(data, specs, stores, db)
    argv = [sys.executable, "-m", "tillsync.tools.cli", "relay", "serve", "--data", str(data),
            "--port", "0", *(("--db", db) if db else ()),
            *(("--workers", str(workers)) if workers > 1 else ())]
    server = await Server.start(argv, root / f"{name}.log")
    url = f"ws://127.0.0.1:{server.port}"
    progress(f"{name}: process {server.proc.pid} listening on {url}")
    try:
        progress(f"{name}: enrolling devices over the wire; back offices push the catalogue")
        enrolled = await asyncio.gather(*(
            enroll(url, codes[s.index], s.name, device_key(s.private_key), s.device_id)
            for s in specs))
        for s, e in zip(specs, enrolled, strict=True):
            if e.store != s.store or e.relay_key != store_keys[s.store]:
                raise RuntimeError(f"{s.name} enrolled in {e.store}, expected {s.store}")
        for store in stores:
            await setup_store(data, url, store, office_codes[store])
        store_entries: Counter[str] = Counter()
        for load in loads:
            store_entries[load.spec.store] += load.entries
        sales = sum(load.sales for load in loads)
        progress(f"{name}: timing {len(loads)} tills pushing {sales:,} sales "
                 f"({sum(len(x.frames) for x in loads)} frames of up to {args.batch}, "
                 f"{args.inflight} in flight per till)")
        cpu0, self0, pg0 = server.cpu(), time.process_time(), postgres_cpu()
        t0 = time.perf_counter()
        live = [TillRun() for _ in loads]
        tasks = [asyncio.create_task(drive_till(
            run, load, url, store_keys[load.spec.store], args.inflight,
            store_entries[load.spec.store], t0, not args.no_receipts))
            for run, load in zip(live, loads, strict=True)]
        watcher = asyncio.create_task(_watch(live, sum(len(x.frames) for x in loads), t0))
        try:
            async with asyncio.timeout(RUN_TIMEOUT):
                runs = await asyncio.gather(*tasks)
        finally:
            watcher.cancel()
        t_end = time.perf_counter() - t0
        cpu1, self1, pg1 = server.cpu(), time.process_time(), postgres_cpu()
    finally:
        progress(f"{name}: stopping it")
        code = await server.stop()
    ingest_wall = max(r.ingested_at for r in runs)
    receipts_wall = max(r.receipts_at for r in runs) if not args.no_receipts else None
    # CPU over the whole timed window (ingest, plus the receipt fan-out tail if waited for).
    relay_cpu = cpu_delta(cpu1, cpu0, t_end)
    progress(f"{name}: exited with {code}; checking its database")
    check = await check_relay_db(data / DB_FILE, loads, db)
    latencies = [x for r in runs for x in r.latencies_ms]
    entries = sum(load.entries for load in loads)
    return {
        "backend": "postgresql" if db else "sqlite", "processes": workers,
        "postgres_cpu_pct": round(100 * (pg1 - pg0) / t_end, 1) if db else None,
        "tills": len(loads), "stores": len(stores), "sales": sales, "entries": entries,
        "batches": len(latencies), "batch": args.batch, "inflight": args.inflight,
        "frame_bytes": sum(load.size for load in loads),
        "connect_s_max": round(max(r.connected_at for r in runs), 3),
        "ingest_seconds": round(ingest_wall, 3),
        "sales_per_second": round(sales / ingest_wall, 1),
        "entries_per_second": round(entries / ingest_wall, 1),
        "batch_latency_ms": summarise_ms(latencies),
        "receipts_seconds": None if receipts_wall is None else round(receipts_wall, 3),
        "receipts_delivered": sum(r.receipts for r in runs),
        "receipt_frames": sum(r.receipt_frames for r in runs),
        "timed_window_s": round(t_end, 3),
        "relay_cpu": relay_cpu,
        "relay_cpu_us_per_sale": us_per_sale(relay_cpu, sales),
        "loadgen_cpu_us_per_sale": round(1e6 * (self1 - self0) / sales, 1),
        "loadgen_cpu_s": round(self1 - self0, 2),
        "loadgen_cpu_pct": round(100 * (self1 - self0) / t_end, 1),
        "relay_exit": code,
        "check": check,
    }


async def _watch(runs: Sequence[TillRun], frames: int, t0: float) -> None:
    while True:
        await asyncio.sleep(5)
        acked = sum(len(r.latencies_ms) for r in runs)
        done = sum(1 for r in runs if r.ingested_at)
        progress(f"  {time.perf_counter() - t0:.0f} s: {acked}/{frames} batches ingested, "
                 f"{done}/{len(runs)} tills finished")

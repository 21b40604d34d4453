"""Benchmark of the till's store: durable sale writes, group commit, catalogue load.

    python -m tillsync.tools.bench_store            # human-readable table
    python -m tillsync.tools.bench_store --json     # one JSON document on stdout

What it measures, on this machine, in one run:

1. durable sale-write latency: sequential ``await till.record("sale", ...)`` calls, each
   returning only after its SQLite commit (WAL, synchronous=FULL): p50/p90/p99/max, sales/s;
2. throughput under concurrency: N writer tasks recording sales at once (group commit);
3. baselines with the same sales and the same pragmas: a hand-rolled "REST outbox"
   (plain ``sqlite3``, one INSERT of the JSON sale and one commit per sale; no validation,
   no hash chain, no signature) and the same outbox through ``aiosqlite``;
4. catalogue load: a store with 20,000 products built through ``till.put``, then
   ``Till.open`` + ``till.all("products")`` (median of 5), the on-disk document size, and
   the same products loaded as one JSON blob from SQLite as the baseline;
5. whether the project's targets were met: p99 <= 5 ms per durable sale, for one caller
   and for 8 concurrent callers (when ``--writers`` includes 8).

Progress goes to stderr; results to stdout.  Everything is written in a temporary
directory removed at the end, unless ``--keep DIR`` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiosqlite

from tillsync.peer.storage import TillDB
from tillsync.peer.store import DB_FILE, Till
from tillsync.tools.workload import (
    machine,
    percentile,
    positive_int,
    products_for_sales,
    progress,
    sale_body,
)

TARGET_P99_MS = 5.0
TARGET_WRITERS = 8  # the concurrent callers the second p99 target is stated for
SHIFT = "5a1e5a1e-0000-4000-8000-000000000001"
PROGRESS_EVERY = 2_000


# -- results -------------------------------------------------------------------------------


@dataclass
class Latency:
    """Latencies of one series of durable writes, in milliseconds."""

    label: str
    count: int
    seconds: float
    p50: float
    p90: float
    p99: float
    max: float
    mean: float

    @property
    def per_second(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "per_second": round(self.per_second, 1)}


@dataclass
class Concurrent:
    writers: int
    latency: Latency
    commits: int | None  # SQLite transactions the writer task committed, if countable

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"writers": self.writers, **self.latency.to_json()}
        out["commits"] = self.commits
        out["sales_per_commit"] = (
            round(self.latency.count / self.commits, 2) if self.commits else None
        )
        return out


@dataclass
class Catalogue:
    products: int
    build_seconds: float
    batch: int
    snapshot_bytes: int
    change_chunks: int
    changes_bytes: int
    open_ms: list[float] = field(default_factory=list)
    all_ms: list[float] = field(default_factory=list)
    compacted_snapshot_bytes: int | None = None
    compacted_open_ms: list[float] = field(default_factory=list)
    compacted_all_ms: list[float] = field(default_factory=list)
    json_bytes: int = 0
    json_load_ms: list[float] = field(default_factory=list)

    @property
    def document_bytes(self) -> int:
        return self.snapshot_bytes + self.changes_bytes

    @property
    def compacted(self) -> bool:
        return self.change_chunks == 0

    def to_json(self) -> dict[str, Any]:
        def median(xs: list[float]) -> float | None:
            return round(statistics.median(xs), 2) if xs else None

        return {
            **asdict(self),
            "document_bytes": self.document_bytes,
            "compacted": self.compacted,
            "open_ms_median": median(self.open_ms),
            "all_ms_median": median(self.all_ms),
            "open_plus_all_ms_median": median([a + b for a, b in zip(self.open_ms, self.all_ms,
                                                                      strict=True)]),
            "compacted_open_ms_median": median(self.compacted_open_ms),
            "compacted_all_ms_median": median(self.compacted_all_ms),
            "json_load_ms_median": median(self.json_load_ms),
            "puts_per_second": round(self.products / self.build_seconds, 1)
            if self.build_seconds else None,
        }


# -- helpers -------------------------------------------------------------------------------


def summarise(label: str, samples_ns: Sequence[int], seconds: float) -> Latency:
    ordered = sorted(s / 1e6 for s in samples_ns)
    return Latency(
        label=label,
        count=len(ordered),
        seconds=round(seconds, 3),
        p50=round(percentile(ordered, 50), 3),
        p90=round(percentile(ordered, 90), 3),
        p99=round(percentile(ordered, 99), 3),
        max=round(ordered[-1], 3),
        mean=round(statistics.fmean(ordered), 3),
    )


# -- workload ------------------------------------------------------------------------------


def sale_bodies(count: int, seed: int) -> list[dict[str, Any]]:
    """``count`` valid sale bodies with 1-5 lines; about one line in four is weighed."""
    rng = random.Random(seed)
    catalogue = products_for_sales()
    pieces = [p for p in catalogue if p.startswith("piece-")]
    weighed = [p for p in catalogue if p.startswith("kg-")]
    bodies: list[dict[str, Any]] = []
    for _ in range(count):
        bodies.append(sale_body(rng, catalogue, pieces, weighed, SHIFT))
    return bodies


def catalogue_products(count: int, seed: int) -> dict[str, dict[str, Any]]:
    rng = random.Random(seed)
    categories = ["bakery", "dairy", "produce", "drinks", "household", "frozen", "snacks"]
    out: dict[str, dict[str, Any]] = {}
    for i in range(count):
        weighed = rng.random() < 0.1
        body: dict[str, Any] = {
            "name": f"Product {i} {rng.choice(categories)}",
            "sku": f"SKU{i:07d}",
            "barcode": f"{rng.randrange(10**12, 10**13)}",
            "price": rng.randint(25, 25_000),
            "tax_rate": rng.choice(["0", "5.5", "10", "20"]),
            "category": rng.choice(categories),
            "unit": "kg" if weighed else "each",
        }
        if weighed:
            body["volatile"] = rng.random() < 0.5
        else:
            body["reorder_level"] = str(rng.randint(0, 20))
        out[f"prod-{i:06d}"] = body
    return out


async def ready_to_sell(till: Till) -> None:
    """Give an open till the sales catalogue, a cashier and an open shift (SHIFT)."""
    await asyncio.gather(*(till.put("products", pid, body)
                           for pid, body in products_for_sales().items()))
    await till.put("cashiers", "ann", {"name": "Ann", "role": "cashier", "pin": "1234"})
    await till.record("shift_open", {"cashier_id": "ann", "opening_cash": 10_000},
                      client_id=SHIFT)


async def sales_store(path: Path) -> Till:
    """A store with the sales catalogue, a cashier and an open shift (SHIFT)."""
    await Till.init(path, name="Bench Till")
    till = await Till.open(path)
    try:
        await ready_to_sell(till)
    except BaseException:
        await till.close()  # an open store keeps aiosqlite's (non-daemon) thread alive
        raise
    return till


def count_commits(till: Till) -> Callable[[], int | None]:
    """Count the SQLite transactions the till commits, by wrapping its database's commit.

    Instrumentation only (it reaches into ``Till._db``); if the internals change, the
    count is reported as unknown instead of failing the benchmark."""
    db = getattr(till, "_db", None)
    original = getattr(db, "commit", None)
    if not isinstance(db, TillDB) or original is None:
        return lambda: None
    counter = [0]

    async def counted() -> None:
        counter[0] += 1
        await original()

    db.commit = counted  # type: ignore[method-assign]
    return lambda: counter[0]


# -- 1 and 2: tillsync sales ---------------------------------------------------------------


async def timed_sequential(
    label: str, bodies: Sequence[dict[str, Any]], write: Callable[[dict[str, Any]], Awaitable[Any]]
) -> Latency:
    samples: list[int] = []
    started = time.perf_counter()
    for i, body in enumerate(bodies, 1):
        t0 = time.perf_counter_ns()
        await write(body)
        samples.append(time.perf_counter_ns() - t0)
        if i % PROGRESS_EVERY == 0:
            progress(f"  {label}: {i}/{len(bodies)}")
    return summarise(label, samples, time.perf_counter() - started)


async def bench_sequential(till: Till, bodies: Sequence[dict[str, Any]], warmup: int) -> Latency:
    progress(f"tillsync sequential: warm-up {warmup} sales")
    for body in bodies[:warmup]:
        await till.record("sale", body)
    progress(f"tillsync sequential: {len(bodies) - warmup} durable sales")
    return await timed_sequential(
        "tillsync Till.record (sequential)", bodies[warmup:],
        lambda body: till.record("sale", body),
    )


async def bench_concurrent(
    till: Till, bodies: Sequence[dict[str, Any]], writers: int, commits: Callable[[], int | None]
) -> Concurrent:
    samples: list[int] = []
    cursor = iter(bodies)  # shared: every task takes the next sale; no awaits in next()

    async def writer() -> None:
        for body in cursor:
            t0 = time.perf_counter_ns()
            await till.record("sale", body)
            samples.append(time.perf_counter_ns() - t0)

    progress(f"tillsync concurrent: {writers} writers, {len(bodies)} sales")
    before = commits()
    started = time.perf_counter()
    await asyncio.gather(*(writer() for _ in range(writers)))
    seconds = time.perf_counter() - started
    after = commits()
    latency = summarise(f"tillsync, {writers} concurrent writers", samples, seconds)
    used = None if before is None or after is None else after - before
    return Concurrent(writers, latency, used)


# -- 3: baselines --------------------------------------------------------------------------

_OUTBOX = (
    "CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY, client_id TEXT NOT NULL, "
    "created_at TEXT NOT NULL, body TEXT NOT NULL, sent INTEGER NOT NULL DEFAULT 0)"
)
_OUTBOX_INSERT = "INSERT INTO outbox (client_id, created_at, body) VALUES (?, ?, ?)"


def _outbox_row(body: dict[str, Any]) -> tuple[str, str, str]:
    return (str(uuid.uuid4()), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            json.dumps(body, separators=(",", ":")))


async def bench_outbox_sqlite3(
    path: Path, bodies: Sequence[dict[str, Any]], warmup: int
) -> Latency:
    """The hand-rolled outbox: plain sqlite3, INSERT + COMMIT per sale, same pragmas."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(_OUTBOX)
        conn.commit()

        def write(body: dict[str, Any]) -> None:
            conn.execute(_OUTBOX_INSERT, _outbox_row(body))
            conn.commit()

        progress(f"baseline sqlite3 outbox: warm-up {warmup}, then {len(bodies) - warmup}")
        for body in bodies[:warmup]:
            write(body)

        async def write_async(body: dict[str, Any]) -> None:
            write(body)  # deliberately blocking, as the hand-rolled outbox is

        return await timed_sequential("baseline: sqlite3 outbox (INSERT+COMMIT)",
                                      bodies[warmup:], write_async)
    finally:
        conn.close()


async def bench_outbox_aiosqlite(
    path: Path, bodies: Sequence[dict[str, Any]], warmup: int
) -> Latency:
    """The same outbox through aiosqlite: one transaction per sale."""
    async with aiosqlite.connect(path) as conn:
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA synchronous=FULL")
        await conn.execute(_OUTBOX)
        await conn.commit()

        async def write(body: dict[str, Any]) -> None:
            await conn.execute(_OUTBOX_INSERT, _outbox_row(body))
            await conn.commit()

        progress(f"baseline aiosqlite outbox: warm-up {warmup}, then {len(bodies) - warmup}")
        for body in bodies[:warmup]:
            await write(body)
        return await timed_sequential("baseline: aiosqlite outbox (INSERT+COMMIT)",
                                      bodies[warmup:], write)


# -- 4: catalogue ----------------------------------------------------------------------------


def document_sizes(db_path: Path) -> tuple[int, int, int]:
    """(snapshot bytes, change chunks, change bytes) of a closed store, read with sqlite3."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        row = conn.execute(
            "SELECT (SELECT coalesce(sum(length(data)), 0) FROM doc_snapshot), "
            "(SELECT count(*) FROM doc_changes), "
            "(SELECT coalesce(sum(length(data)), 0) FROM doc_changes)"
        ).fetchone()
    finally:
        conn.close()
    return int(row[0]), int(row[1]), int(row[2])


async def time_opens(path: Path, opens: int, expected: int, label: str
                     ) -> tuple[list[float], list[float]]:
    open_ms: list[float] = []
    all_ms: list[float] = []
    for i in range(opens):
        t0 = time.perf_counter()
        till = await Till.open(path)
        t1 = time.perf_counter()
        products = till.all("products")
        t2 = time.perf_counter()
        await till.close()
        if len(products) != expected:
            raise RuntimeError(f"store has {len(products)} products, expected {expected}")
        open_ms.append(round((t1 - t0) * 1e3, 2))
        all_ms.append(round((t2 - t1) * 1e3, 2))
        progress(f"  {label} open {i + 1}/{opens}: Till.open {open_ms[-1]:.0f} ms, "
                 f"all('products') {all_ms[-1]:.0f} ms")
    return open_ms, all_ms


async def bench_catalogue(root: Path, count: int, batch: int, opens: int, seed: int,
                          compact: bool) -> Catalogue:
    path = root / "catalogue"
    products = catalogue_products(count, seed)
    await Till.init(path, name="Catalogue Till")
    till = await Till.open(path)
    progress(f"catalogue: {count} products through Till.put, {batch} concurrent puts at a time")
    items = list(products.items())
    started = time.perf_counter()
    done = 0
    try:
        for start in range(0, len(items), batch):
            chunk = items[start:start + batch]
            await asyncio.gather(*(till.put("products", pid, body) for pid, body in chunk))
            before, done = done, done + len(chunk)
            if done // PROGRESS_EVERY != before // PROGRESS_EVERY or done == len(items):
                elapsed = time.perf_counter() - started
                progress(f"  put {done}/{len(items)} products ({elapsed:.1f} s, "
                         f"{done / elapsed:.0f}/s)")
    finally:
        await till.close()
    build_seconds = time.perf_counter() - started
    snapshot, chunks, changes = document_sizes(path / DB_FILE)
    result = Catalogue(count, round(build_seconds, 2), batch, snapshot, chunks, changes)
    progress(f"catalogue: document {snapshot + changes} bytes (snapshot {snapshot}, "
             f"{chunks} change chunks of {changes} bytes); {opens} opens")
    result.open_ms, result.all_ms = await time_opens(path, opens, count, "as built")

    if compact and chunks:
        progress("catalogue: compacting the document (snapshot only) and opening again")
        db = await TillDB.open(path / DB_FILE)
        try:
            from tillsync.peer.master import MasterData

            data, _, _ = await db.document()
            device_id = await db.meta("device_id") or ""
            snapshot_bytes = MasterData.load(data, uuid.UUID(device_id).bytes).save()
            await db.compact(snapshot_bytes)
            await db.checkpoint()
        finally:
            await db.close()
        result.compacted_snapshot_bytes = document_sizes(path / DB_FILE)[0]
        result.compacted_open_ms, result.compacted_all_ms = await time_opens(
            path, opens, count, "compacted")

    # Baseline: the same products as one JSON blob in SQLite, json.loads'ed.
    blob_path = root / "catalogue-json.db"
    blob = json.dumps(products, separators=(",", ":"))
    conn = sqlite3.connect(blob_path)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE catalogue (id INTEGER PRIMARY KEY, data TEXT NOT NULL)")
        conn.execute("INSERT INTO catalogue (id, data) VALUES (1, ?)", (blob,))
        conn.commit()
    finally:
        conn.close()
    result.json_bytes = len(blob.encode())
    for _ in range(opens):
        t0 = time.perf_counter()
        conn = sqlite3.connect(blob_path)
        try:
            row = conn.execute("SELECT data FROM catalogue WHERE id = 1").fetchone()
        finally:
            conn.close()
        loaded = json.loads(row[0])
        result.json_load_ms.append(round((time.perf_counter() - t0) * 1e3, 2))
        if len(loaded) != count:
            raise RuntimeError("JSON baseline lost products")
    return result


# -- report --------------------------------------------------------------------------------


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.1f}x" if b > 0 else "n/a"


def render(report: dict[str, Any], lat: dict[str, Latency], conc: list[Concurrent],
           cat: Catalogue | None) -> str:
    m = report["machine"]
    out = [
        "tillsync store benchmark",
        f"machine   {m['cpu']}, {m['cores']} cores, {m['platform']}",
        f"software  Python {m['python']}, automerge {m['automerge']}, SQLite {m['sqlite']}, "
        f"aiosqlite {m['aiosqlite']}, jsonschema {m['jsonschema']}",
        f"store     {report['directory']} (WAL, synchronous=FULL)",
        "",
    ]
    if lat or conc:
        out.append("durable sale writes (ms per sale; 1-5 lines, ~25% weighed 0.75 kg lines)")
        header = f"  {'':46} {'n':>6} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>8} {'sales/s':>8}"
        out.append(header)
        rows = list(lat.values()) + [c.latency for c in conc]
        for r in rows:
            out.append(f"  {r.label:46} {r.count:>6} {r.p50:>7.2f} {r.p90:>7.2f} {r.p99:>7.2f} "
                       f"{r.max:>8.2f} {r.per_second:>8.0f}")
        for c in conc:
            if c.commits:
                out.append(f"  group commit, {c.writers} writers: {c.commits} transactions, "
                           f"{c.latency.count / c.commits:.1f} sales per commit")
        out.append("")
    seq = lat.get("tillsync")
    for key, name in (("sqlite3", "plain sqlite3 outbox"), ("aiosqlite", "aiosqlite outbox")):
        base = lat.get(key)
        if seq and base:
            out.append(f"  tillsync vs {name}: p50 {_ratio(seq.p50, base.p50)}, "
                       f"p99 {_ratio(seq.p99, base.p99)} slower; throughput "
                       f"{_ratio(base.per_second, seq.per_second)} lower")
    if seq and any(k in lat for k in ("sqlite3", "aiosqlite")):
        out.append("")
    if cat is not None:
        j = cat.to_json()
        out += [
            f"catalogue: {cat.products} products",
            f"  build through Till.put ({cat.batch} concurrent puts per gather): "
            f"{cat.build_seconds:.1f} s ({j['puts_per_second']:.0f} puts/s)",
            f"  document on disk: {cat.document_bytes:,} bytes = snapshot "
            f"{cat.snapshot_bytes:,} + {cat.change_chunks} change chunks {cat.changes_bytes:,}"
            f" ({'compacted' if cat.compacted else 'not fully compacted'})",
            f"  Till.open             median {j['open_ms_median']:>9.1f} ms   "
            f"(runs: {', '.join(f'{x:.0f}' for x in cat.open_ms)})",
            f"  till.all('products')  median {j['all_ms_median']:>9.1f} ms   "
            f"(runs: {', '.join(f'{x:.0f}' for x in cat.all_ms)})",
            f"  open + all            median {j['open_plus_all_ms_median']:>9.1f} ms",
        ]
        if cat.compacted_open_ms:
            out += [
                f"  after compaction (snapshot {cat.compacted_snapshot_bytes or 0:,} bytes, "
                "no chunks):",
                f"    Till.open           median {j['compacted_open_ms_median']:>9.1f} ms",
                f"    till.all            median {j['compacted_all_ms_median']:>9.1f} ms",
            ]
        out.append(f"  baseline JSON blob ({cat.json_bytes:,} bytes) sqlite3 SELECT + json.loads: "
                   f"median {j['json_load_ms_median']:.1f} ms "
                   f"({_ratio(j['open_plus_all_ms_median'], j['json_load_ms_median'])} faster "
                   "than open + all)")
        out.append("")
    target = report["target"]
    if target["p99_ms"] is not None:
        verdict = "MET" if target["met"] else "NOT MET"
        out.append(f"target: p99 <= {TARGET_P99_MS:g} ms per durable sale: {verdict} "
                   f"(sequential p99 {target['p99_ms']:.2f} ms)")
    eight = report.get("target_concurrent")
    if eight is not None:
        verdict = "MET" if eight["met"] else "NOT MET"
        out.append(f"target: p99 <= {TARGET_P99_MS:g} ms per durable sale under "
                   f"{eight['writers']} concurrent callers: {verdict} (p99 {eight['p99_ms']:.2f} "
                   "ms)")
    return "\n".join(out)


# -- main ----------------------------------------------------------------------------------


def _writer_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give numbers such as 8,64") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give positive numbers such as 8,64")
    return values


STEPS = ("sequential", "concurrent", "baseline", "catalogue")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tillsync.tools.bench_store",
        description="Benchmark the tillsync store on this machine: durable sale-write "
        "latency, group-commit throughput, naive outbox baselines and catalogue load time.",
        epilog="Progress goes to stderr. A default run takes about 1-2 minutes on 2 cores.",
    )
    p.add_argument("--sales", type=positive_int, default=5_000, metavar="N",
                   help="sales timed in the sequential test and in each baseline "
                   "(default: %(default)s)")
    p.add_argument("--warmup", type=int, default=200, metavar="N",
                   help="untimed sales written first by each sequential test (default: "
                   "%(default)s)")
    p.add_argument("--writers", type=_writer_list, default=[8, 64], metavar="A,B,...",
                   help="numbers of concurrent writer tasks to test group commit with "
                   "(default: 8,64)")
    p.add_argument("--concurrent-sales", type=positive_int, default=3_000, metavar="N",
                   help="sales written in total per concurrency level (default: %(default)s)")
    p.add_argument("--products", type=positive_int, default=20_000, metavar="N",
                   help="products in the catalogue-load test (default: %(default)s)")
    p.add_argument("--batch", type=positive_int, default=250, metavar="N",
                   help="Till.put calls gathered at once while building the catalogue; they "
                   "share group commits (default: %(default)s)")
    p.add_argument("--opens", type=positive_int, default=5, metavar="N",
                   help="times the catalogue store is opened; the median is reported "
                   "(default: %(default)s)")
    p.add_argument("--no-compact", dest="compact", action="store_false",
                   help="do not also time opening the catalogue after compacting its document")
    p.add_argument("--skip", action="append", choices=STEPS, default=[],
                   help="leave out a step (repeatable)")
    p.add_argument("--seed", type=int, default=1, help="seed of the generated workload")
    p.add_argument("--keep", metavar="DIR", type=Path,
                   help="write the stores to DIR (new or empty) and keep them, instead of a "
                   "temporary directory that is removed")
    p.add_argument("--json", action="store_true",
                   help="print one machine-readable JSON document instead of the table")
    return p


async def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    skip = set(args.skip)
    lat: dict[str, Latency] = {}
    conc: list[Concurrent] = []
    cat: Catalogue | None = None
    warmup = max(0, args.warmup)
    bodies = sale_bodies(warmup + args.sales, args.seed)

    if "sequential" not in skip or "concurrent" not in skip:
        till = await sales_store(root / "sales")
        try:
            if "sequential" not in skip:
                lat["tillsync"] = await bench_sequential(till, bodies, warmup)
            if "concurrent" not in skip:
                commits = count_commits(till)
                extra = sale_bodies(args.concurrent_sales + 64, args.seed + 1)
                await bench_concurrent(till, extra[:64], 8, commits)  # warm-up
                for writers in args.writers:
                    conc.append(await bench_concurrent(
                        till, extra[64:], writers, commits))
        finally:
            await till.close()
    if "baseline" not in skip:
        lat["sqlite3"] = await bench_outbox_sqlite3(root / "outbox-sqlite3.db", bodies, warmup)
        lat["aiosqlite"] = await bench_outbox_aiosqlite(root / "outbox-aiosqlite.db", bodies,
                                                        warmup)
    if "catalogue" not in skip:
        cat = await bench_catalogue(root, args.products, args.batch, args.opens, args.seed,
                                    args.compact)

    seq = lat.get("tillsync")
    report: dict[str, Any] = {
        "machine": machine(),
        "directory": str(root),
        "kept": args.keep is not None,
        "sales": {k: v.to_json() for k, v in lat.items()},
        "concurrent": [c.to_json() for c in conc],
        "catalogue": None if cat is None else cat.to_json(),
        "target": {"p99_ms_limit": TARGET_P99_MS,
                   "p99_ms": None if seq is None else seq.p99,
                   "met": None if seq is None else seq.p99 <= TARGET_P99_MS},
    }
    eight = [c for c in conc if c.writers == TARGET_WRITERS]
    if eight:
        p99 = eight[0].latency.p99
        report["target_concurrent"] = {"writers": TARGET_WRITERS, "p99_ms_limit": TARGET_P99_MS,
                                       "p99_ms": p99, "met": p99 <= TARGET_P99_MS}
    if seq is not None:
        ratios: dict[str, Any] = {}
        for key in ("sqlite3", "aiosqlite"):
            base = lat.get(key)
            if base is not None:
                ratios[key] = {
                    "p50": round(seq.p50 / base.p50, 2) if base.p50 else None,
                    "p99": round(seq.p99 / base.p99, 2) if base.p99 else None,
                    "throughput": round(base.per_second / seq.per_second, 2)
                    if seq.per_second else None,
                }
        report["tillsync_vs_baseline"] = ratios
    report["_render"] = render(report, lat, conc, cat)
    return report


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.keep is not None:
        keep: Path = args.keep
        if keep.exists() and (not keep.is_dir() or any(keep.iterdir())):
            print(f"--keep {keep}: give a new or empty directory", file=sys.stderr)
            return 2
        keep.mkdir(parents=True, exist_ok=True)
        report = asyncio.run(run(args, keep.resolve()))
    else:
        with tempfile.TemporaryDirectory(prefix="tillsync-bench-") as tmp:
            report = asyncio.run(run(args, Path(tmp)))
    text = report.pop("_render")
    print(json.dumps(report, indent=2) if args.json else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

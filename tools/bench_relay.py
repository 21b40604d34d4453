"""Benchmark of the relay: sales ingested per second from many tills at once.

    python -m tillsync.tools.bench_relay            # human-readable table
    python -m tillsync.tools.bench_relay --json     # one JSON document on stdout

What it does, in one run:

1. makes a relay data folder, one-time codes for every till (and one back-office device
   per store) with ``Relay.new_code``, then starts the relay as a separate process
   (``python -m tillsync.tools.cli relay serve --port 0``), so the load generator never shares its
   event loop; devices enroll over the wire (``peer.client.enroll``), and each store's
   back office pushes the product catalogue and a cashier through a real sync round, so
   every product a sale names is in the relay's master document;
2. before any timing, generates every till's log: a ``shift_open`` and then sales of 1-5
   lines (about one line in four weighed, ``"0.75"`` kg), each entry sealed (canonical
   msgpack, SHA-256 chain, Ed25519 signature), and packs them into ``entries`` frames of
   ``--batch`` entries, byte for byte what ``ClientLink.send_entries`` sends;
3. times all tills at once: each opens a websocket, runs the handshake through a
   ``ClientLink``, then pushes its frames with ``--inflight`` of them unanswered at most,
   until the relay has answered ``ingested`` for every one (an ``ingested`` answer comes
   after the batch's transaction committed: invoice numbers, receipts, stock).  Reports
   sales/s over that wall time, batch latency, CPU used by the relay process (its event
   loop thread and its SQLite threads separately) and by the load generator; then how
   long until every till had received every receipt of its store (the relay pushes each
   store's whole receipt stream to each of its connected devices);
4. stops the relay and checks its database: one invoice per sale, numbered 1..N without
   gap or duplicate per (store, series), no rejected entries, no warnings but
   low-stock alerts;
5. the baseline, in the same run: ``tools.naive_rest`` in its own process, one HTTP
   request and one SQLite transaction (WAL, synchronous=FULL) per sale, idempotency by
   key; the same number of tills each POSTing its sales one after the other over a
   keep-alive connection; checked the same way.

Progress goes to stderr; results to stdout.  Everything is written in a temporary
directory removed at the end, unless ``--keep DIR`` is given (the relay's log is
``relay.log`` there).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter, deque
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgpack
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from websockets.asyncio.client import connect

from tillsync.peer.client import PUSH_WINDOW, enroll, init_enrolled, sync_once
from tillsync.peer.identity import DeviceKey
from tillsync.peer.log import GENESIS_PREV, seal
from tillsync.peer.store import Till
from tillsync.peer.sync.engine import (
    ClientLink,
    Ingested,
    LinkFailed,
    Ready,
    ReceiptsReceived,
    RemoteError,
)
from tillsync.peer.sync.frames import MAX_BATCH, MAX_FRAME, encode, entry_to_wire
from tillsync.relay.server import DB_FILE, Relay
from tillsync.tools.workload import (
    machine,
    percentile,
    positive_int,
    products_for_sales,
    progress,
    sale_body,
)

RELAY_RUNS = ("relay", "relay_pg", "relay_pg_workers")  # SQLite; PostgreSQL 1 and N processes
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
TARGET_SALES_PER_SECOND = 30_000
TARGET_RATIO = 20.0
SERIES = "INV"
CASHIER = "ann"
START_TIMEOUT = 60.0
RUN_TIMEOUT = 900.0
RECEIPTS_TIMEOUT = 300.0
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LISTENING = re.compile(rb"listening on (?:ws|http)://([0-9.]+):([0-9]+)")


# -- workload ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TillSpec:
    """What a worker process needs to build one till's log (picklable)."""

    index: int
    store: str
    device_id: str
    name: str
    series: str
    private_key: bytes  # raw Ed25519 seed
    sales: int
    batch: int
    seed: int


@dataclass
class TillLoad:
    spec: TillSpec
    frames: list[bytes]
    counts: list[int]  # entries in each frame
    heads: list[int]  # the device's seq after each frame
    sales: int
    entries: int
    size: int
    requests: list[bytes] = field(default_factory=list)  # baseline HTTP requests


def device_key(raw: bytes) -> DeviceKey:
    return DeviceKey(Ed25519PrivateKey.from_private_bytes(raw))


def _stamp(base: datetime, ms: int) -> str:
    moment = base + timedelta(milliseconds=ms)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build_till(spec: TillSpec, baseline_sales: int) -> TillLoad:
    """One till's sealed log packed into frames, and its baseline requests (runs in a
    worker process)."""
    rng = random.Random(spec.seed)
    catalogue = products_for_sales()
    pieces = [p for p in catalogue if p.startswith("piece-")]
    weighed = [p for p in catalogue if p.startswith("kg-")]
    key = device_key(spec.private_key)
    base = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
    shift = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    bodies = [sale_body(rng, catalogue, pieces, weighed, shift)
              for _ in range(max(spec.sales, baseline_sales))]

    wire: list[list[Any]] = []
    prev = GENESIS_PREV
    entry = seal(key, body={"cashier_id": CASHIER, "opening_cash": 10_000,
                            "register": spec.name},
                 client_id=shift, device_id=spec.device_id, seq=1, prev=prev,
                 kind="shift_open", client_created_at=_stamp(base, 0), ticket=None)
    wire.append(entry_to_wire(entry))
    prev = entry.hash
    for n, body in enumerate(bodies[:spec.sales], 1):
        entry = seal(key, body=body, client_id=str(uuid.UUID(int=rng.getrandbits(128),
                                                             version=4)),
                     device_id=spec.device_id, seq=n + 1, prev=prev, kind="sale",
                     client_created_at=_stamp(base, 1000 * n), ticket=f"{spec.series}-{n:06d}")
        wire.append(entry_to_wire(entry))
        prev = entry.hash
    frames, counts, heads = [], [], []
    for start in range(0, len(wire), spec.batch):
        chunk = wire[start:start + spec.batch]
        frame = encode("entries", entries=chunk)  # exactly ClientLink.send_entries' frame
        if len(frame) > MAX_FRAME:
            raise ValueError(f"a frame of {len(chunk)} entries is {len(frame)} bytes, over "
                             f"the {MAX_FRAME}-byte limit: lower --batch")
        frames.append(frame)
        counts.append(len(chunk))
        heads.append(start + len(chunk))

    requests = []
    for n, body in enumerate(bodies[:baseline_sales], 1):
        doc = json.dumps({"store": spec.store, "device_id": spec.device_id,
                          "ticket": f"{spec.series}-{n:06d}",
                          "client_created_at": _stamp(base, 1000 * n), "sale": body},
                         separators=(",", ":")).encode()
        key_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        requests.append((f"POST /sales HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         f"Content-Type: application/json\r\nIdempotency-Key: {key_id}\r\n"
                         f"Content-Length: {len(doc)}\r\n\r\n").encode() + doc)
    return TillLoad(spec, frames, counts, heads, spec.sales, len(wire),
                    sum(len(f) for f in frames), requests)


def _build_star(args: tuple[TillSpec, int]) -> TillLoad:
    return build_till(*args)


def till_specs(tills: int, stores: int, sales: int, batch: int, seed: int) -> list[TillSpec]:
    rng = random.Random(seed)
    specs = []
    for i in range(tills):
        store = f"bench-store-{i % stores + 1}"
        raw = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
            serialization.NoEncryption())
        specs.append(TillSpec(i, store, str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                              f"Till {i + 1}", f"T{i + 1:02d}", raw, sales, batch,
                              seed * 1000 + i))
    return specs


def generate(specs: Sequence[TillSpec], baseline_sales: int) -> list[TillLoad]:
    workers = max(1, min(len(specs), os.cpu_count() or 1))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        loads = []
        for load in pool.map(_build_star, [(s, baseline_sales) for s in specs]):
            loads.append(load)
            if len(loads) % max(1, len(specs) // 4) == 0 or len(loads) == len(specs):
                progress(f"  generated {len(loads)}/{len(specs)} tills")
    return loads


# -- processes -----------------------------------------------------------------------------


class Server:
    """A child process that prints ``... listening on SCHEME://HOST:PORT`` when ready."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log
        self._drain: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, argv: Sequence[str], log: Path) -> Server:
        env = dict(os.environ)
        root = PROJECT_ROOT
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        with open(log, "ab") as err:  # noqa: ASYNC230 - opened once, handed to the child
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, stderr=err, env=env)
        assert proc.stdout is not None
        try:
            async with asyncio.timeout(START_TIMEOUT):
                while True:
                    line = await proc.stdout.readline()
                    if not line:
                        raise RuntimeError(f"{argv[2]} exited before listening; see {log}")
                    found = LISTENING.search(line)
                    if found:
                        break
        except BaseException:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            raise
        server = cls(proc, int(found.group(2)), log)
        server._drain = asyncio.create_task(server._discard(proc.stdout))
        return server

    @staticmethod
    async def _discard(stream: asyncio.StreamReader) -> None:
        while await stream.read(65536):
            pass

    def cpu(self) -> dict[str, float]:
        """CPU of the relay: its process, or with ``--workers`` every worker process
        (each one's event loop counted as "main"), and their prepare worker processes
        (hashes, bodies and schema checks of large batches: "prepare")."""
        total = process_cpu(self.proc.pid)
        total["prepare"] = 0.0
        relays = [self.proc.pid, *children(self.proc.pid, "tools.cli")]
        for pid in relays[1:]:
            for key, value in process_cpu(pid).items():
                total[key] += value
        for pid in relays:
            for worker in children(pid, "multiprocessing.spawn"):
                total["prepare"] += sum(process_cpu(worker).values())
        return total

    async def stop(self) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                async with asyncio.timeout(30):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._drain is not None:
            await self._drain
        return self.proc.returncode or 0


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of a process: its main thread (the event loop) and all other threads."""
    out = {"main": 0.0, "threads": 0.0}
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", encoding="ascii") as handle:
                fields = handle.read().rpartition(")")[2].split()
        except OSError:
            continue
        seconds = (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime
        out["main" if tid == str(pid) else "threads"] += seconds
    return out


def children(pid: int, command: str) -> list[int]:
    """The direct children of a process whose command line has ``command`` in it (the
    relay's worker processes, their prepare workers)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as handle:
                    fields = handle.read().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[1]) == pid and command in _cmdline(int(entry)):
                found.append(int(entry))
    return found


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def postgres_cpu() -> float:
    """CPU seconds of every PostgreSQL server process on this machine so far."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as handle:
                    head, _, rest = handle.read().rpartition(")")
            except OSError:
                continue
            if head.endswith("(postgres"):
                fields = rest.split()
                total += (int(fields[11]) + int(fields[12])) / _TICK
    return total


def cpu_delta(after: dict[str, float], before: dict[str, float], wall: float
              ) -> dict[str, float]:
    out = {}
    for part in ("main", "threads", "prepare"):
        if part in after:
            spent = after[part] - before[part]
            out[f"{part}_s"] = round(spent, 2)
            out[f"{part}_pct"] = round(100 * spent / wall, 1) if wall else 0.0
    return out


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


# -- 2: the baseline -----------------------------------------------------------------------


async def post_sales(port: int, requests: Sequence[bytes]) -> tuple[list[float], list[int]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    latencies: list[float] = []
    numbers: list[int] = []
    try:
        for request in requests:
            started = time.perf_counter()
            writer.write(request)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            status = head[:head.index(b"\r\n")]
            length = int(re.search(rb"(?i)content-length: *([0-9]+)", head).group(1))  # type: ignore[union-attr]
            body = await reader.readexactly(length)
            if b" 200 " not in status:
                raise RuntimeError(f"baseline answered {status!r}: {body[:200]!r}")
            numbers.append(int(json.loads(body)["invoice_no"]))
            latencies.append((time.perf_counter() - started) * 1e3)
    finally:
        writer.close()
        await writer.wait_closed()
    return latencies, numbers


def check_baseline_db(path: Path, loads: Sequence[TillLoad]) -> dict[str, Any]:
    expected: Counter[str] = Counter()
    for load in loads:
        expected[load.spec.store] += len(load.requests)
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    problems: list[str] = []
    try:
        for store, want in sorted(expected.items()):
            n, distinct, low, high, keys = conn.execute(
                "SELECT count(*), count(DISTINCT invoice_no), min(invoice_no), "
                "max(invoice_no), count(DISTINCT idempotency_key) FROM sales WHERE store = ?",
                (store,)).fetchone()
            if not (n == want == distinct == keys == high and low == 1):
                problems.append(f"{store}: {n} sales for {want}, numbers {low}..{high}")
    finally:
        conn.close()
    return {"ok": not problems, "problems": problems}


async def bench_baseline(root: Path, loads: Sequence[TillLoad]) -> dict[str, Any]:
    db = root / "naive-rest.db"
    argv = [sys.executable, "-m", "tillsync.tools.naive_rest", "--db", str(db), "--port", "0"]
    server = await Server.start(argv, root / "naive-rest.log")
    sales = sum(len(load.requests) for load in loads)
    progress(f"baseline: process {server.proc.pid}, {len(loads)} tills POSTing {sales:,} "
             "sales, one request and one transaction each")
    try:
        cpu0, self0 = server.cpu(), time.process_time()
        t0 = time.perf_counter()
        results = await asyncio.gather(*(post_sales(server.port, load.requests)
                                         for load in loads))
        wall = time.perf_counter() - t0
        cpu1, self1 = server.cpu(), time.process_time()
    finally:
        code = await server.stop()
    latencies = [x for lat, _ in results for x in lat]
    return {
        "tills": len(loads), "sales": sales, "seconds": round(wall, 3),
        "sales_per_second": round(sales / wall, 1),
        "request_latency_ms": summarise_ms(latencies),
        "server_cpu": cpu_delta(cpu1, cpu0, wall),
        "loadgen_cpu_pct": round(100 * (self1 - self0) / wall, 1),
        "server_exit": code,
        "check": check_baseline_db(db, loads),
    }


# -- report --------------------------------------------------------------------------------


def render(report: dict[str, Any]) -> str:
    m, w = report["machine"], report["workload"]
    out = [
        "tillsync relay benchmark",
        f"machine   {m['cpu']}, {m['cores']} cores, {m['platform']}",
        f"software  Python {m['python']}, SQLite {m['sqlite']}, aiosqlite {m['aiosqlite']}, "
        f"websockets {report['websockets']}, msgpack {report['msgpack']}, asyncpg "
        f"{report['asyncpg']}, PostgreSQL {report['postgresql'] or '(not run)'}",
        f"workload  {w['tills']} tills in {w['stores']} stores, {w['sales_per_till']:,} sales "
        f"each ({w['sales']:,} sales + {w['tills']} shift_open); 1-5 lines per sale, ~25% "
        "weighed 0.75 kg lines",
        f"          generated and sealed before timing in {w['generate_seconds']:.1f} s "
        f"({w['frame_bytes'] / 1e6:.1f} MB of entries frames)",
        "",
    ]
    for key in RELAY_RUNS:
        r = report.get(key)
        if r is None:
            continue
        lat, cpu = r["batch_latency_ms"], r["relay_cpu"]
        if r.get("backend") == "postgresql":
            where = (f"PostgreSQL {report.get('postgresql', '')}, {r['processes']} relay "
                     f"process{'es on one port' if r['processes'] > 1 else ''}")
        else:
            where = "SQLite WAL synchronous=FULL, 1 relay process"
        out += [
            f"relay on {where} (websockets; {r['tills']} concurrent connections, batches of "
            f"{r['batch']}, {r['inflight']} in flight each)",
            f"  sales ingested      {r['sales']:>10,} in {r['ingest_seconds']:.2f} s   "
            f"{r['sales_per_second']:>10,.0f} sales/s",
            f"  batches             {r['batches']:>10,}   latency ms: p50 {lat['p50']:.1f}  "
            f"p90 {lat['p90']:.1f}  p99 {lat['p99']:.1f}  max {lat['max']:.1f}",
        ]
        if r["receipts_seconds"] is not None:
            out.append(f"  receipts fan-out    every till had every receipt of its store after "
                       f"{r['receipts_seconds']:.2f} s ({r['receipts_delivered']:,} receipts "
                       f"in {r['receipt_frames']:,} frames)")
        pg = (f"; PostgreSQL server {r['postgres_cpu_pct']:.0f}%"
              if r.get("postgres_cpu_pct") is not None else "")
        per_sale = {k: 1e6 * cpu.get(f"{k}_s", 0.0) / r["sales"] for k in
                    ("main", "threads", "prepare")}
        out += [
            f"  CPU over {r['timed_window_s']:.1f} s   relay event loop(s) {cpu['main_pct']:.0f}% "
            f"+ relay threads {cpu['threads_pct']:.0f}% + prepare worker "
            f"{cpu.get('prepare_pct', 0):.0f}% of a core{pg}; "
            f"load generator {r['loadgen_cpu_pct']:.0f}%",
            f"  CPU per sale        relay {sum(per_sale.values()):.0f} us (event loop "
            f"{per_sale['main']:.0f}, threads {per_sale['threads']:.0f}, prepare "
            f"{per_sale['prepare']:.0f}); load generator "
            f"{1e6 * r['loadgen_cpu_s'] / r['sales']:.0f} us",
        ]
        check = r["check"]
        numbered = ", ".join(f"{s['store']} {s['series']} {s['first']}..{s['last']}"
                             for s in check["series"])
        if check["ok"]:
            out.append(f"  check               OK: {numbered}, gapless, no duplicates; "
                       f"{check['receipts'].get('accepted', 0):,} receipts accepted, "
                       "0 rejected, no warnings but "
                       f"{check['warnings'].get('low_stock', 0):,} low-stock alerts")
        else:
            out.append("  check               FAILED: " + "; ".join(check["problems"]))
        out.append("")
    b = report.get("baseline")
    if b is not None:
        lat, cpu = b["request_latency_ms"], b["server_cpu"]
        out += [
            "baseline: naive REST (tools/naive_rest.py, separate process): one HTTP/1.1 POST "
            "and one SQLite",
            "  transaction per sale (WAL, synchronous=FULL; SELECT idempotency key, bump and "
            "read counter,",
            f"  INSERT, COMMIT); {b['tills']} tills POSTing sequentially over keep-alive "
            "connections",
            f"  sales               {b['sales']:>10,} in {b['seconds']:.2f} s   "
            f"{b['sales_per_second']:>10,.0f} sales/s",
            f"  request latency ms  p50 {lat['p50']:.2f}  p90 {lat['p90']:.2f}  "
            f"p99 {lat['p99']:.2f}  max {lat['max']:.2f}",
            f"  CPU                 server {cpu['main_pct'] + cpu['threads_pct']:.0f}% of a "
            f"core; load generator {b['loadgen_cpu_pct']:.0f}%",
            "  check               " + ("OK: gapless per store, no duplicates"
                                        if b["check"]["ok"]
                                        else "FAILED: " + "; ".join(b["check"]["problems"])),
            "",
        ]
    t = report["targets"]
    if t["sales_per_second"] is not None:
        out.append(f"target: >= {TARGET_SALES_PER_SECOND:,} sales/s at the relay: "
                   f"{'MET' if t['rate_met'] else 'NOT MET'} "
                   f"({t['sales_per_second']:,.0f} sales/s)")
    if t["ratio"] is not None:
        out.append(f"target: >= {TARGET_RATIO:g}x the baseline: "
                   f"{'MET' if t['ratio_met'] else 'NOT MET'} (relay {t['ratio']:.1f}x "
                   "the naive REST back end)")
    return "\n".join(out)


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
    checks = [report.get(k, {}).get("check", {}).get("ok", True) for k in ("relay", "baseline")]
    return 0 if all(checks) else 1


if __name__ == "__main__":
    sys.exit(main())

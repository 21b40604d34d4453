"""Benchmark of LAN sync between tills: ``python -m tillsync.tools.bench_lan``.

Every till is a real ``peer run`` daemon (``peer.lan.node.Node``) in a process of its
own, on loopback, linked to every other till (full mesh, static list).  A small watcher
inside each process prints one JSON line whenever the till commits something, with the
wall-clock time just after the commit, so delays are measured from commit to commit
across processes (one machine, one clock).

1. propagation: one till edits a product's price (``--edits`` times, one at a time,
   through its HTTP API); for each edit, the delay from the commit on the editing till
   to the commit on each of the others.  Bytes: frames sent on all LAN links per edit.
2. convergence: the relay is down; every till records ``--sales`` sales (through its
   HTTP API) which spread over the LAN; then the relay starts and one till (the only
   one allowed to reach it) carries everything up; time from the relay listening until
   every till holds every receipt.  Checked: invoice numbers 1..N, each sale once.

Two baselines (same run, same ``--edits`` and ``--pause``), pycrdt-websocket delivering
one edit to the same number of clients (``tools.lan_baseline``), if it is installed:

- *in-process, no persistence*: server and every client in one process on one event
  loop, delay to each receiver's observer firing: the sync protocol's floor;
- *a process per client, persisted*: server and each client in a process of its own,
  every client storing every update in SQLite (WAL, ``synchronous=FULL``, a commit per
  update), delay from the editor having stored its edit to each receiver having stored
  it: the set-up tillsync's figure is measured in.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tillsync.peer.client import init_enrolled, sync_once
from tillsync.peer.lan.node import Node, NodeConfig
from tillsync.peer.store import Till
from tillsync.relay.server import Relay
from tillsync.tools.api_cli import call
from tillsync.tools.bench_relay import PROJECT_ROOT, Server
from tillsync.tools.bench_relay.procs import ended
from tillsync.tools.ports import free_port
from tillsync.tools.workload import machine, percentile, positive_int, progress

PRODUCT = "bench-coffee"
CASHIER = "bench-ann"


# -- inside each till's process --------------------------------------------------------


async def run_node(args: argparse.Namespace) -> None:
    """A daemon plus a watcher printing what it holds after every commit."""
    config = NodeConfig(Path(args.dir), lan_host="127.0.0.1", lan_port=args.port,
                        peers=args.peer, mdns=False, interval=0.2, max_backoff=0.3,
                        relay_enabled=args.relay, api_host="127.0.0.1", api_port=0)
    node = Node(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, node.stop)
    task = asyncio.create_task(node.run())
    while node.till is None:
        if task.done():
            await task  # raises what stopped it
        await asyncio.sleep(0.01)
    till = node.till
    seen, linked = -1, -1
    while not task.done():
        peers = node.peers.values()
        connected = sum(p.connected for p in peers)
        # A line on every commit, and when a link comes or goes (no commit says so).
        if till.version != seen or connected != linked:
            seen, linked = till.version, connected
            product = till.master.get("products", PRODUCT) or {}
            line = {"t": time.time(), "price": product.get("price"),
                    "entries": sum(till.heads().values()),
                    "receipts": till.receipts_position()[0],
                    "peers": connected,
                    "bytes_out": sum(p.bytes_out for p in peers)}
            print(json.dumps(line), flush=True)
        await till.wait_changed(seen, 0.1)
    await task


# -- the driver ------------------------------------------------------------------------


@dataclass
class TillProc:
    index: int
    path: Path
    port: int
    proc: asyncio.subprocess.Process | None = None
    lines: list[dict[str, Any]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    reader: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    @property
    def last(self) -> dict[str, Any]:
        return self.lines[-1] if self.lines else {}

    async def start(self, peers: Sequence[TillProc], relay: bool, log: Path) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (PROJECT_ROOT, env.get("PYTHONPATH"))
                                            if p)
        argv = [sys.executable, "-m", "tillsync.tools.bench_lan", "node", str(self.path),
                "--port", str(self.port)]
        for peer in peers:
            argv += ["--peer", peer.url]
        if relay:
            argv.append("--relay")
        with open(log, "ab") as err:  # noqa: ASYNC230 - opened once, handed to the child
            self.proc = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, stderr=err, env=env)
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            with contextlib.suppress(ValueError):
                self.lines.append(json.loads(line))
                self.changed.set()

    async def wait(self, check: Any, what: str, within: float = 120.0) -> dict[str, Any]:
        """The first line (from now on, or the latest) for which ``check`` holds."""
        async with asyncio.timeout(within):
            start = max(0, len(self.lines) - 1)
            while True:
                for line in self.lines[start:]:
                    if check(line):
                        return line
                start = len(self.lines)
                if self.proc is not None and self.proc.returncode is not None:
                    raise RuntimeError(f"till {self.index} exited while waiting for {what}")
                self.changed.clear()
                await self.changed.wait()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGINT)
            await ended(self.proc, 20)
        if self.reader is not None:
            await self.reader




async def setup(root: Path, tills: int, products: int = 1
                ) -> tuple[Path, int, list[TillProc]]:
    """A relay data dir, its port, and ``tills`` enrolled tills sharing one catalogue of
    ``products`` products (the one edited among them)."""
    data = root / "relay"
    relay = await Relay.open(data)
    try:
        # Till 1 sets up the catalogue: it needs the back-office role for prices.
        codes = [await relay.new_code("bench-shop", f"Till {i + 1}",
                                      "backoffice" if i == 0 else "till")
                 for i in range(tills)]
    finally:
        await relay.close()
    port = free_port()
    server = await start_relay(data, port, root / "relay.log")
    try:
        url = f"ws://127.0.0.1:{port}"
        procs = []
        for i, code in enumerate(codes):
            path = root / f"till{i + 1}"
            await init_enrolled(path, name=f"Till {i + 1}", url=url, code=code)
            procs.append(TillProc(i, path, free_port()))
        async with await Till.open(procs[0].path) as till:
            await till.put("products", PRODUCT, {"name": "Coffee", "sku": "C1", "price": 250})
            for n in range(1, products):
                await till.put("products", f"item-{n}", {"name": f"Item {n}", "sku": f"I{n}",
                                                         "price": 100 + n})
            await till.put("cashiers", CASHIER, {"name": "Ann", "role": "cashier",
                                                 "pin": "1234"})
            await sync_once(till)
        for proc in procs:
            async with await Till.open(proc.path) as till:
                await sync_once(till)
    finally:
        await server.stop()
    return data, port, procs


async def start_relay(data: Path, port: int, log: Path) -> Server:
    return await Server.start([sys.executable, "-m", "tillsync.tools.cli",
                               "relay", "serve", "--data",
                               str(data), "--host", "127.0.0.1", "--port", str(port)], log)


async def _api(path: Path, method: str, route: str, body: dict[str, Any]) -> None:
    """One write through the HTTP API of the daemon holding ``path``."""
    status, answer = await call(path, method, route, body)
    assert status in (200, 201), answer


async def propagation(procs: list[TillProc], edits: int, pause: float = 0.0
                      ) -> dict[str, Any]:
    origin, others = procs[0], procs[1:]
    delays: list[float] = []
    bytes_before = sum(p.last.get("bytes_out", 0) for p in procs)
    for i in range(edits):
        price = 1000 + i
        await _api(origin.path, "PUT", f"/api/master/products/{PRODUCT}", {"price": price})
        sent = await origin.wait(lambda line, p=price: line["price"] == p, "the edit")
        for other in others:
            got = await other.wait(lambda line, p=price: line["price"] == p,
                                   f"edit {i} on till {other.index}", within=30)
            delays.append((got["t"] - sent["t"]) * 1000)
        if pause:  # the mesh's acknowledgements and forwards of this edit die down first
            await asyncio.sleep(pause)
        if (i + 1) % 50 == 0:
            progress(f"propagation: {i + 1}/{edits} edits")
    await asyncio.sleep(0.5)  # let the last acknowledgements go out before counting bytes
    total_bytes = sum(p.last.get("bytes_out", 0) for p in procs) - bytes_before
    ordered = sorted(delays)
    return {"edits": edits, "receivers": len(others), "samples": len(ordered),
            "pause_ms": round(pause * 1000),
            "p50_ms": round(percentile(ordered, 50), 2),
            "p95_ms": round(percentile(ordered, 95), 2),
            "p99_ms": round(percentile(ordered, 99), 2),
            "max_ms": round(ordered[-1], 2),
            "lan_bytes_per_edit": round(total_bytes / edits),
            "lan_bytes_per_edit_per_receiver": round(total_bytes / edits / len(others))}


async def record_sales(proc: TillProc, sales: int, rng: random.Random) -> None:
    shift = str(uuid.uuid4())
    await _api(proc.path, "POST", "/api/entries", {
        "kind": "shift_open", "client_id": shift,
        "body": {"cashier_id": CASHIER, "opening_cash": 0}})

    async def one() -> None:
        qty = rng.randint(1, 3)
        body = {"lines": [{"product_id": PRODUCT, "qty": qty, "unit_price": 250}],
                "payments": [{"method": "cash", "amount": 250 * qty}],
                "shift_client_id": shift}
        await _api(proc.path, "POST", "/api/entries", {"kind": "sale", "body": body})

    for start in range(0, sales, 50):  # 50 at a time: the till's group commit batches them
        await asyncio.gather(*(one() for _ in range(min(50, sales - start))))


async def convergence(root: Path, data: Path, port: int, procs: list[TillProc],
                      sales: int) -> dict[str, Any]:
    progress(f"convergence: {len(procs)} tills record {sales} sales each, relay down")
    rng = random.Random(7)
    t0 = time.monotonic()
    await asyncio.gather(*(record_sales(p, sales, rng) for p in procs))
    recorded = time.monotonic() - t0
    entries = len(procs) * (sales + 1)
    t1 = time.monotonic()
    for proc in procs:
        await proc.wait(lambda line: line["entries"] >= entries, "every entry on the LAN")
    lan_spread = time.monotonic() - t1
    progress(f"convergence: {entries} entries on every till; starting the relay")
    server = await start_relay(data, port, root / "relay.log")
    started = time.time()
    try:
        finished = [await p.wait(lambda line: line["receipts"] >= entries,
                                 "every receipt", within=300) for p in procs]
    finally:
        await server.stop()
    elapsed = max(line["t"] for line in finished) - started
    first = finished[0]["t"] - started
    db = sqlite3.connect(data / "relay.db")
    try:
        numbers = [n for (n,) in db.execute("SELECT invoice_no FROM invoices ORDER BY invoice_no")]
        distinct = db.execute("SELECT count(DISTINCT client_id) FROM invoices").fetchone()[0]
    finally:
        db.close()
    total = len(procs) * sales
    return {"tills": len(procs), "sales_per_till": sales, "entries": entries,
            "record_s": round(recorded, 2),
            "lan_spread_after_last_record_s": round(lan_spread, 2),
            "relay_to_all_numbered_s": round(elapsed, 2),
            "relay_to_carrier_numbered_s": round(first, 2),
            "invoices_gapless": numbers == list(range(1, total + 1)),
            "each_sale_once": distinct == total == len(numbers)}


async def baseline(edits: int, receivers: int, pause: float, *, persisted: bool
                   ) -> dict[str, Any]:
    """One of the two pycrdt-websocket baselines (see the module's docstring)."""
    try:
        from tillsync.tools.lan_baseline import pycrdt_propagation
        from tillsync.tools.lan_baseline_procs import pycrdt_persisted
    except ImportError as exc:
        return {"skipped": str(exc)}
    run = pycrdt_persisted if persisted else pycrdt_propagation
    try:
        result: dict[str, Any] = await run(edits, receivers, pause)
    except RuntimeError as exc:  # not installed
        return {"skipped": str(exc)}
    result.pop("latencies_ms", None)
    return result


async def bench(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    progress(f"setting up a relay and {args.tills} enrolled tills in {root}")
    data, port, procs = await setup(root, args.tills, args.products)
    report: dict[str, Any] = {"machine": machine(), "args": vars(args) | {"func": None}}
    try:
        for i, proc in enumerate(procs):
            # Full mesh: each till dials the ones before it; only till 1 may reach the relay.
            await proc.start(procs[:i], relay=(i == 0), log=root / f"till{i + 1}.log")
        for proc in procs:
            await proc.wait(lambda line: line["peers"] >= len(procs) - 1, "every LAN link",
                            within=60)
        progress(f"all {len(procs)} tills linked; {args.edits} edits")
        report["propagation"] = await propagation(procs, args.edits, args.pause / 1000)
        report["propagation"]["products"] = args.products
        report["convergence"] = await convergence(root, data, port, procs, args.sales)
    finally:
        for proc in procs:
            await proc.stop()
    progress("baseline: pycrdt-websocket, one process, no persistence")
    report["baseline"] = await baseline(args.edits, args.tills - 1, args.pause / 1000,
                                        persisted=False)
    progress("baseline: pycrdt-websocket, a process per client, persisted")
    report["baseline_persisted"] = await baseline(args.edits, args.tills - 1,
                                                  args.pause / 1000, persisted=True)
    return report


def render(report: dict[str, Any]) -> str:
    m, p, c, b = (report["machine"], report["propagation"], report["convergence"],
                  report["baseline"])
    lines = [
        f"machine: {m.get('cpu')}, {m.get('cores')} cores, Python {m.get('python')}",
        f"LAN propagation of one master-data edit, 1 till -> {p['receivers']} tills, "
        f"each persisting it ({p['edits']} edits, {p['samples']} deliveries, "
        f"{p['products']} product{'s' if p['products'] != 1 else ''} in the catalogue"
        + (f", edits {p['pause_ms']} ms apart" if p.get("pause_ms") else ", back to back")
        + "):",
        f"  tillsync, a process per till, persisted: p50 {p['p50_ms']:.2f} ms  "
        f"p95 {p['p95_ms']:.2f} ms  p99 {p['p99_ms']:.2f} ms  max {p['max_ms']:.2f} ms; "
        f"{p['lan_bytes_per_edit']} bytes on the LAN per edit "
        f"({p['lan_bytes_per_edit_per_receiver']} per receiving till)",
    ]
    for label, base in (("pycrdt-websocket, in-process, not persisted", b),
                        ("pycrdt-websocket, a process per client, persisted",
                         report.get("baseline_persisted", {"skipped": "not run"}))):
        if "skipped" in base:
            lines.append(f"  {label}: not run: {base['skipped']}")
            continue
        lines += [f"  {label}: p50 {base['p50_ms']:.2f} ms  p95 {base['p95_ms']:.2f} ms; "
                  f"{base['link_bytes_per_edit']:.0f} bytes per edit on all its links "
                  f"({base.get('setup', '')}; version {base.get('version')})",
                  f"    tillsync against it: p50 {p['p50_ms'] / base['p50_ms']:.1f}x, "
                  f"bytes per edit {p['lan_bytes_per_edit'] / base['link_bytes_per_edit']:.1f}x"]
    lines += [
        f"convergence: {c['tills']} tills x {c['sales_per_till']} offline sales "
        f"({c['entries']} entries) recorded in {c['record_s']} s, on every till "
        f"{c['lan_spread_after_last_record_s']} s after the last",
        f"  relay up -> carrier till numbered: {c['relay_to_carrier_numbered_s']} s; "
        f"-> every till holds every receipt: {c['relay_to_all_numbered_s']} s",
        f"  invoices gapless 1..{c['tills'] * c['sales_per_till']}: {c['invoices_gapless']}; "
        f"each sale numbered once: {c['each_sale_once']}",
    ]
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m tillsync.tools.bench_lan", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode")
    node = sub.add_parser("node", help="(internal) one till's daemon with a watcher")
    node.add_argument("dir")
    node.add_argument("--port", type=int, required=True)
    node.add_argument("--peer", action="append", default=[])
    node.add_argument("--relay", action="store_true")
    ap.add_argument("--tills", type=positive_int, default=5, help="tills (default 5)")
    ap.add_argument("--edits", type=positive_int, default=200,
                    help="price edits to propagate (default 200)")
    ap.add_argument("--pause", type=float, default=0.0, metavar="MS",
                    help="wait this long after an edit reached every till before the next "
                         "(default 0: back to back, each edit meeting the previous one's "
                         "acknowledgements and forwards on the mesh); the baselines too")
    ap.add_argument("--products", type=positive_int, default=1,
                    help="products in the shared catalogue (default 1; a shop has "
                         "thousands, and some of the work per edit grows with them)")
    ap.add_argument("--sales", type=positive_int, default=1000,
                    help="offline sales per till (default 1000)")
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a "
                    "temporary directory, removed)")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.mode == "node":
        asyncio.run(run_node(args))
        return 0
    if args.tills < 2:
        parser().error("--tills: at least 2")
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="tillsync-lan-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        report = asyncio.run(bench(args, root))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(report, indent=2, default=str) if args.json else render(report))
    checked = report["convergence"]
    return 0 if checked["invoices_gapless"] and checked["each_sale_once"] else 1


if __name__ == "__main__":
    sys.exit(main())

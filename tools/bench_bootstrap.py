"""Benchmark of a fresh till joining a store with a large catalogue.

    python -m tillsync.tools.bench_bootstrap                 # 20,000 products
    python -m tillsync.tools.bench_bootstrap --products 2000 --runs 3 --json

What it does, in one process on one event loop:

1. builds a master document of ``--products`` products (the catalogue of
   ``tools.bench_store``) and a cashier, and stores it as the document of store ``shop``
   of a real relay (``relay.server.running``, SQLite, on 127.0.0.1);
2. enrolls a fresh till with a one-time code (``peer.client.init_enrolled``), then runs
   its first sync round (``peer.client.sync_once``) through a loopback TCP proxy that
   counts the bytes each way (websocket framing and the HTTP upgrade included);
3. "can sell": from the moment the round starts until the till holds the whole
   catalogue and has recorded a shift open and a sale of the last product (both calls
   made while the round goes on, as a front end would);
4. the baselines, in the same run: the size of the document's own ``save()``, and
   pycrdt-websocket (Yjs) serving an equivalent Y document (a map of maps, the same
   fields) to a fresh ``pycrdt.Provider`` through the same proxy; its time runs from
   the connection until the client's map holds every product.  It needs the optional
   extra ``bench`` (``pip install -e '.[bench]'``); without it that part is skipped.

Targets: bytes to the fresh till <= 1.1 x the document's snapshot; time until it can
sell <= 0.3 s and below pycrdt-websocket's.  Progress goes to stderr; results to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import automerge.core as am

from tillsync.peer.client import init_enrolled, sync_once
from tillsync.peer.master import MasterData
from tillsync.peer.store import Till
from tillsync.relay.server import RelayConfig, running
from tillsync.tools.bench_store import catalogue_products
from tillsync.tools.workload import machine, positive_int, progress

STORE = "shop"
CASHIER = "bench-cashier"
TARGET_RATIO = 1.1
TARGET_SECONDS = 0.3


@dataclass
class Connection:
    """Bytes one proxied connection carried each way."""

    down: int = 0  # to the client
    up: int = 0  # from the client


@dataclass
class CountingProxy:
    """A loopback TCP proxy in front of ``port`` that counts each connection's bytes."""

    port: int
    connections: list[Connection] = field(default_factory=list)

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[int]:
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        try:
            yield int(server.sockets[0].getsockname()[1])
        finally:
            server.close()
            await server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        counted = Connection()
        self.connections.append(counted)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            writer.close()
            return

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter,
                       down: bool) -> None:
            try:
                while data := await source.read(1 << 16):
                    if down:
                        counted.down += len(data)
                    else:
                        counted.up += len(data)
                    sink.write(data)
                    await sink.drain()
            except OSError:
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, True))


def build_document(products: dict[str, dict[str, Any]]) -> MasterData:
    """The store's document as a back office would make it: one change per record."""
    doc = MasterData.new(uuid.uuid4().bytes)
    doc.put("cashiers", CASHIER, {"name": "Bench", "role": "cashier", "pin": "1234"})
    for i, (product_id, body) in enumerate(products.items(), 1):
        doc.put("products", product_id, body)
        if i % 5000 == 0:
            progress(f"  document: {i}/{len(products)} products")
    return doc


async def _sell_when_ready(till: Till, last_product: str, price: int) -> None:
    """Record a shift open and a sale as soon as the till holds the catalogue."""
    seen = till.version
    while not (till.master.has("products", last_product)
               and till.master.has("cashiers", CASHIER)):
        seen = await till.wait_changed(seen)  # woken by each commit of the till
    shift = str(uuid.uuid4())
    await till.record("shift_open", {"cashier_id": CASHIER, "opening_cash": 0},
                      client_id=shift)
    await till.record("sale", {
        "shift_client_id": shift,
        "lines": [{"product_id": last_product, "qty": 1, "unit_price": price}],
        "payments": [{"method": "cash", "amount": price}],
    })


async def tillsync_run(root: Path, doc: MasterData, products: dict[str, dict[str, Any]]
                       ) -> dict[str, Any]:
    """One relay with the document, one fresh till's first round through the proxy."""
    last_product = next(reversed(products))
    price = int(products[last_product]["price"])
    async with running(RelayConfig(root / "relay", port=0)) as (relay, port):
        await relay.storage.init_document(STORE, doc.save())
        await relay.hubs.get(STORE)  # a relay serving the store holds its document already
        code = await relay.new_code(STORE, "Fresh till")
        proxy = CountingProxy(port)
        async with proxy.serving() as proxy_port:
            url = f"ws://127.0.0.1:{proxy_port}"
            await init_enrolled(root / "till", name="Fresh till", url=url, code=code)
            async with await Till.open(root / "till") as till:
                cpu0, t0 = time.process_time(), time.perf_counter()
                round_task = asyncio.create_task(sync_once(till, url))
                selling = asyncio.create_task(_sell_when_ready(till, last_product, price))
                await asyncio.wait([round_task, selling], return_when=asyncio.FIRST_COMPLETED)
                if not selling.done():  # the round ended (or failed) first
                    selling.cancel()
                    await round_task  # raises its error
                    raise RuntimeError("the round ended without the catalogue")
                await selling
                can_sell = time.perf_counter() - t0
                cpu_sell = time.process_time() - cpu0
                report = await round_task
                round_seconds = time.perf_counter() - t0
                held = len(till.master.ids("products"))
        sync = proxy.connections[-1]
    if held != len(products):
        raise RuntimeError(f"the till holds {held} products of {len(products)}")
    return {"bytes_to_till": sync.down, "bytes_from_till": sync.up,
            "can_sell_s": round(can_sell, 4), "cpu_until_can_sell_s": round(cpu_sell, 4),
            "round_s": round(round_seconds, 4), "doc_messages": report.doc_changes}


async def pycrdt_run(products: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """pycrdt-websocket serving the same catalogue to a fresh client."""
    from pycrdt import Doc, Map, Provider
    from pycrdt.websocket import WebsocketServer, YRoom
    from websockets.asyncio.client import connect
    from websockets.asyncio.server import ServerConnection, serve

    from tillsync.tools.lan_baseline import _Channel

    path = "/shop"
    served: Doc[Any] = Doc()
    catalogue = served.get("products", type=Map)
    with served.transaction():
        for product_id, body in products.items():
            catalogue[product_id] = Map(body)
    async with contextlib.AsyncExitStack() as stack:
        wss = await stack.enter_async_context(WebsocketServer(auto_clean_rooms=False))
        room = YRoom(ydoc=served)
        await wss.start_room(room)
        wss.rooms[path] = room

        async def handler(conn: ServerConnection) -> None:
            await wss.serve(_Channel(conn, path))

        # No frame limit on either side: the whole state travels as one message.
        server = await stack.enter_async_context(serve(handler, "127.0.0.1", 0, max_size=None))
        proxy = CountingProxy(server.sockets[0].getsockname()[1])
        proxy_port = await stack.enter_async_context(proxy.serving())
        client: Doc[Any] = Doc()
        received = client.get("products", type=Map)
        complete = asyncio.Event()

        def on_change(_: object) -> None:
            if len(received) >= len(products):
                complete.set()

        received.observe(on_change)
        cpu0, t0 = time.process_time(), time.perf_counter()
        ws = await stack.enter_async_context(connect(f"ws://127.0.0.1:{proxy_port}{path}",
                                                     max_size=None))
        await stack.enter_async_context(Provider(client, _Channel(ws, path)))
        async with asyncio.timeout(60):
            await complete.wait()
        seconds = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        await asyncio.sleep(0.1)  # whatever else the server sends after the state
    return {"bytes_to_client": proxy.connections[-1].down,
            "bytes_from_client": proxy.connections[-1].up,
            "update_bytes": len(served.get_update()), "ready_s": round(seconds, 4),
            "cpu_until_ready_s": round(cpu, 4), "version": metadata.version("pycrdt-websocket")}


def _pycrdt_available() -> bool:
    try:
        import pycrdt.websocket  # noqa: F401
    except ImportError:
        return False
    return True


async def run(args: argparse.Namespace) -> dict[str, Any]:
    products = catalogue_products(args.products, args.seed)
    progress(f"building a document of {args.products} products")
    doc = build_document(products)
    saved = doc.save()
    snapshot = len(saved)
    with_pycrdt = _pycrdt_available() and not args.no_pycrdt
    if not with_pycrdt:
        progress("pycrdt-websocket is not installed (pip install -e '.[bench]'): "
                 "no pycrdt baseline")
    runs: list[dict[str, Any]] = []
    baselines: list[dict[str, Any]] = []
    loads: list[float] = []  # CPU of Automerge's own load of the snapshot, each run
    for i in range(args.runs):  # interleaved: tillsync, then pycrdt, each run
        with tempfile.TemporaryDirectory(prefix="tillsync-bootstrap-") as tmp:
            progress(f"run {i + 1}/{args.runs}: tillsync")
            runs.append(await tillsync_run(Path(tmp), doc, products))
        # The floor of "can sell": a till must load the snapshot to hold the catalogue.
        start = time.process_time()
        am.Document.load(saved)
        loads.append(time.process_time() - start)
        if with_pycrdt:
            progress(f"run {i + 1}/{args.runs}: pycrdt-websocket")
            baselines.append(await pycrdt_run(products))
    bytes_to_till = max(r["bytes_to_till"] for r in runs)
    can_sell = statistics.median(r["can_sell_s"] for r in runs)
    result: dict[str, Any] = {
        "products": args.products, "snapshot_bytes": snapshot, "runs": runs,
        "bytes_to_till_max": bytes_to_till,
        "bytes_ratio_to_snapshot": round(bytes_to_till / snapshot, 3),
        "can_sell_s_median": can_sell, "pycrdt": baselines,
        "automerge_load_cpu_s": [round(t, 4) for t in loads],
        "machine": machine(),
    }
    targets: dict[str, bool] = {
        "bytes_within_1_1x_snapshot": bytes_to_till <= TARGET_RATIO * snapshot,
        "can_sell_within_0_3_s": can_sell <= TARGET_SECONDS,
    }
    if baselines:
        result["pycrdt_ready_s_median"] = statistics.median(b["ready_s"] for b in baselines)
        targets["can_sell_below_pycrdt"] = can_sell < result["pycrdt_ready_s_median"]
    result["targets"] = targets
    return result


def render(result: dict[str, Any]) -> str:
    lines = [f"fresh till, {result['products']} products; document snapshot "
             f"{result['snapshot_bytes']:,} bytes"]
    for r in result["runs"]:
        lines.append(f"  tillsync: {r['bytes_to_till']:,} bytes to the till "
                     f"({r['bytes_to_till'] / result['snapshot_bytes']:.2f}x), can sell after "
                     f"{r['can_sell_s'] * 1e3:.0f} ms (CPU {r['cpu_until_can_sell_s'] * 1e3:.0f} "
                     f"ms), round {r['round_s'] * 1e3:.0f} ms")
    for b in result["pycrdt"]:
        lines.append(f"  pycrdt-websocket {b['version']}: {b['bytes_to_client']:,} bytes to "
                     f"the client, ready after {b['ready_s'] * 1e3:.0f} ms (CPU "
                     f"{b['cpu_until_ready_s'] * 1e3:.0f} ms)")
    lines.append("  automerge: loading the snapshot alone (Document.load) took CPU "
                 + " / ".join(f"{t * 1e3:.0f}" for t in result["automerge_load_cpu_s"])
                 + " ms: no till can sell before it has")
    lines.append("targets: " + ", ".join(f"{k}={'yes' if v else 'NO'}"
                                          for k, v in result["targets"].items()))
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tillsync.tools.bench_bootstrap",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--products", type=positive_int, default=20_000, metavar="N",
                   help="products in the store's catalogue (default 20,000)")
    p.add_argument("--runs", type=positive_int, default=3, metavar="N",
                   help="fresh tills (and pycrdt clients), interleaved (default 3)")
    p.add_argument("--seed", type=int, default=1, help="seed of the generated catalogue")
    p.add_argument("--no-pycrdt", action="store_true", help="skip the pycrdt baseline")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    result = asyncio.run(run(args))
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

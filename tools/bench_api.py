"""Benchmark of the till's HTTP API (``peer.http``) against the store called in-process.

    python -m tillsync.tools.bench_api            # human-readable table
    python -m tillsync.tools.bench_api --json     # one JSON document on stdout

In one run, on this machine:

1. a sale recorded through ``POST /api/entries`` (sequential, each answer after its
   durable commit): p50/p99, beside ``Till.record`` called in-process on the same store;
2. delta reads of a 20,000-product catalogue: the first full read, then a read since
   that cursor after one product was edited through the API;
3. commit-to-event latency: from sending a sale to its ``entry`` event arriving on
   ``/api/events``, beside the time to its answer (the server publishes on commit, so
   the event usually comes first), p50/p99.

The API is served by a child process (the same application ``peer run`` serves, on
loopback, without the LAN and relay parts), so client and server do not share a
loop.  Progress goes to stderr; results to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from tillsync.peer.http.app import serve
from tillsync.peer.http.auth import owner_token
from tillsync.peer.http.context import ApiContext
from tillsync.peer.http.errors import ApiError
from tillsync.peer.http.events import EventBus
from tillsync.peer.store import Till
from tillsync.tools.bench_store import (
    Latency,
    catalogue_products,
    sale_bodies,
    sales_store,
    summarise,
)
from tillsync.tools.workload import machine, progress


async def _no_rounds(rewind: bool) -> dict[str, Any]:
    raise ApiError(503, "no_relay", "the benchmark serves no relay")


async def serve_child(path: Path) -> None:
    """The server side: the API over ``path`` until standard input closes."""
    till = await Till.open(path)
    bus = EventBus()
    watcher = asyncio.create_task(bus.watch(till))
    ctx = ApiContext(till=till, events=bus, daemon_status=dict, sync_round=_no_rounds)
    runner, url = await serve(path, ctx, "127.0.0.1", 0)
    print(url, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await runner.cleanup()
    watcher.cancel()
    await till.close()


async def build(path: Path, products: int) -> None:
    till = await sales_store(path)
    try:
        items = list(catalogue_products(products, seed=7).items())
        for start in range(0, len(items), 1000):
            await asyncio.gather(*(till.put("products", pid, body)
                                   for pid, body in items[start:start + 1000]))
    finally:
        await till.close()
    owner_token(path)


async def in_process(path: Path, bodies: list[dict[str, Any]]) -> Latency:
    till = await Till.open(path)
    try:
        samples = []
        started = time.perf_counter()
        for body in bodies:
            t0 = time.perf_counter_ns()
            await till.record("sale", body)
            samples.append(time.perf_counter_ns() - t0)
        return summarise("Till.record in-process", samples, time.perf_counter() - started)
    finally:
        await till.close()


async def over_http(url: str, token: str, bodies: list[dict[str, Any]],
                    events: list[dict[str, Any]]) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    out: dict[str, Any] = {}
    async with aiohttp.ClientSession(headers=headers) as session:
        samples = []
        started = time.perf_counter()
        for body in bodies:
            t0 = time.perf_counter_ns()
            async with session.post(url + "/api/entries", json={"kind": "sale",
                                                                "body": body}) as r:
                assert r.status == 201, await r.text()
                await r.read()
            samples.append(time.perf_counter_ns() - t0)
        out["record"] = summarise("POST /api/entries", samples, time.perf_counter() - started)

        begun = time.perf_counter()
        async with session.get(url + "/api/master/products") as r:
            raw = await r.read()
        full = json.loads(raw)
        out["full_read"] = {"ms": round((time.perf_counter() - begun) * 1000, 1),
                            "records": len(full["records"]), "bytes": len(raw)}
        async with session.put(url + "/api/master/products/prod-000123",
                               json={"price": 999}) as r:
            assert r.status == 200, await r.text()
        begun = time.perf_counter()
        async with session.get(url + "/api/master/products",
                               params={"since": full["sync_cursor"]}) as r:
            raw = await r.read()
        delta = json.loads(raw)
        out["delta_read"] = {"ms": round((time.perf_counter() - begun) * 1000, 2),
                             "records": len(delta["records"]), "bytes": len(raw)}
        out["answer"], out["event"], out["after_answer"] = await _event_latency(
            session, url, events)
    return out


async def _event_latency(session: aiohttp.ClientSession, url: str,
                         bodies: list[dict[str, Any]]) -> tuple[Latency, Latency, Latency]:
    """From sending a sale: to its answer, and to its ``entry`` event; and from the
    answer to the event (0 when the event came first: the server publishes on commit,
    before it writes the answer)."""
    arrived: dict[str, int] = {}
    wake = asyncio.Event()

    async def read(stream: aiohttp.ClientResponse) -> None:
        kind = ""
        async for raw in stream.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind == "entry":
                arrived[json.loads(line[6:])["client_id"]] = time.perf_counter_ns()
                wake.set()

    answers, events, after = [], [], []
    started = time.perf_counter()
    async with session.get(url + "/api/events") as stream:
        reader = asyncio.create_task(read(stream))
        await asyncio.sleep(0.2)  # the subscription is in place
        for body in bodies:
            sent = time.perf_counter_ns()
            async with session.post(url + "/api/entries", json={"kind": "sale",
                                                                "body": body}) as r:
                client_id = (await r.json())["entry"]["client_id"]
                answered = time.perf_counter_ns()
            while client_id not in arrived:
                wake.clear()
                await asyncio.wait_for(wake.wait(), 10)
            answers.append(answered - sent)
            events.append(arrived[client_id] - sent)
            after.append(max(0, arrived[client_id] - answered))
        reader.cancel()
    seconds = time.perf_counter() - started
    return (summarise("sent -> answer", answers, seconds),
            summarise("sent -> SSE event", events, seconds),
            summarise("answer -> SSE event", after, seconds))


async def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    path = root / "till"
    progress(f"building a store with {args.products} products")
    await build(path, args.products)
    bodies = sale_bodies(args.sales * 2 + args.events, seed=11)
    progress(f"{args.sales} sales through Till.record in-process")
    local = await in_process(path, bodies[:args.sales])
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tillsync.tools.bench_api", "--serve", str(path),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdin is not None
        url = (await child.stdout.readline()).decode().strip()
        progress(f"{args.sales} sales through the HTTP API at {url}")
        remote = await over_http(url, owner_token(path), bodies[args.sales:2 * args.sales],
                                 bodies[2 * args.sales:])
    finally:
        if child.stdin is not None:
            child.stdin.close()
        await asyncio.wait_for(child.wait(), 30)
    return {"machine": machine(), "in_process": local.__dict__,
            **{k: (v.__dict__ if isinstance(v, Latency) else v) for k, v in remote.items()}}


def render(report: dict[str, Any]) -> str:
    m = report["machine"]

    def lat(row: dict[str, Any]) -> str:
        return (f"{row['label']:<26} n={row['count']:<5} p50 {row['p50']:.2f} ms  "
                f"p99 {row['p99']:.2f} ms  max {row['max']:.2f} ms")

    return "\n".join([
        f"machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}",
        lat(report["in_process"]), lat(report["record"]),
        f"full read of {report['full_read']['records']} products: "
        f"{report['full_read']['ms']:.1f} ms, {report['full_read']['bytes']:,} bytes",
        f"delta read after one edit: {report['delta_read']['ms']:.2f} ms, "
        f"{report['delta_read']['records']} record(s), {report['delta_read']['bytes']} bytes",
        lat(report["answer"]), lat(report["event"]), lat(report["after_answer"]),
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sales", type=int, default=1000, help="sales per side")
    parser.add_argument("--products", type=int, default=20_000, help="catalogue size")
    parser.add_argument("--events", type=int, default=200, help="sales timed to their event")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--serve", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        asyncio.run(serve_child(Path(args.serve)))
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        report = asyncio.run(run(args, Path(tmp)))
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark of the till's HTTP API (``peer.http``) against the store called in-process.

    python -m tillsync.tools.bench_api            # human-readable table
    python -m tillsync.tools.bench_api --json     # one JSON document on stdout

In one run, on this machine:

1. a sale recorded through ``POST /api/entries`` (sequential, each answer after its
   durable commit, each with its own ``client_id`` as a front end sends them): p50/p99,
   beside ``Till.record`` called in-process on the same store, with a ``client_id`` too;
2. reads of a 20,000-product catalogue: the first full read (JSON parsed by the client
   included), then rounds of one product edited through the API and a read since the
   last cursor;
3. commit-to-event latency: from sending a sale to its ``entry`` event arriving on
   ``/api/events``, beside the time to its answer (the server publishes on commit, so
   the event usually comes first), p50/p99;
4. the event bus's work per master-data commit (which records it changed, for the
   ``master`` event and delta reads): CPU per price edit at that catalogue size, read
   from the commit's own operations, beside one Automerge diff of the whole document
   (how it was read before), interleaved edit by edit.

With ``--history N``, instead: the ticket history (``GET /api/tickets``) of a till
holding N sales, newest page of 100 and a page within a time range, read through the
ticket indexes (``Till.tickets``) beside the whole-log scan it replaced (every sale and
every receipt read, filtered, sorted), alternating, CPU per page.

CPU time per request in the server process (``time.process_time`` there, read before
and after each timed phase) is reported beside the wall times, as is the CPU time of
``Till.record`` in-process: on a loaded machine it is the steadier figure.

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
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from tillsync.peer.http.app import serve
from tillsync.peer.http.auth import owner_token
from tillsync.peer.http.context import ApiContext
from tillsync.peer.http.delta import changes_all, diff_all
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
    loop = asyncio.get_running_loop()
    while await loop.run_in_executor(None, sys.stdin.readline):  # each line: "CPU now?"
        print(time.process_time(), flush=True)
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


async def in_process(path: Path, bodies: list[dict[str, Any]]) -> tuple[Latency, float]:
    """Sequential ``Till.record`` calls: their latency, and CPU ms per call."""
    till = await Till.open(path)
    try:
        samples = []
        started, cpu = time.perf_counter(), time.process_time()
        for body in bodies:
            t0 = time.perf_counter_ns()
            await till.record("sale", body, client_id=str(uuid.uuid4()))
            samples.append(time.perf_counter_ns() - t0)
        cpu_ms = (time.process_time() - cpu) * 1000 / len(bodies)
        return (summarise("Till.record in-process", samples, time.perf_counter() - started),
                round(cpu_ms, 3))
    finally:
        await till.close()


async def commit_cost(path: Path, edits: int) -> dict[str, Any]:
    """CPU per price edit of reading which records it changed: from the commit's
    operations (what the event bus does), and by one whole-document diff (as before),
    alternating."""
    till = await Till.open(path)
    try:
        ids = sorted(till.master.ids("products"))
        decoded: list[int] = []
        diffed: list[int] = []
        for i in range(edits):
            before = till.master.heads()
            await till.put("products", ids[(i * 7919) % len(ids)], {"price": 5000 + i})
            for way in ("ops", "diff") if i % 2 else ("diff", "ops"):  # alternating
                t0 = time.process_time_ns()
                found = changes_all(till, before) if way == "ops" else \
                    diff_all(till.master, before)
                (decoded if way == "ops" else diffed).append(time.process_time_ns() - t0)
                assert len(found["products"].changed) == 1
        return {"products": len(ids), "edits": edits,
                "from_operations": summarise("from the commit's ops", decoded, 0).__dict__,
                "whole_diff": summarise("whole-document diff", diffed, 0).__dict__}
    finally:
        await till.close()


async def over_http(url: str, token: str, bodies: list[dict[str, Any]],
                    events: list[dict[str, Any]], server_cpu: Callable[[], Awaitable[float]]
                    ) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    out: dict[str, Any] = {}
    # One session: one keep-alive connection for every sequential request.
    async with aiohttp.ClientSession(headers=headers) as session:
        samples = []
        started, cpu, mine = time.perf_counter(), await server_cpu(), time.process_time()
        for body in bodies:
            t0 = time.perf_counter_ns()
            async with session.post(url + "/api/entries", json={
                    "kind": "sale", "body": body, "client_id": str(uuid.uuid4())}) as r:
                assert r.status == 201, await r.text()
                await r.read()
            samples.append(time.perf_counter_ns() - t0)
        out["record"] = summarise("POST /api/entries", samples, time.perf_counter() - started)
        out["record_client_cpu_ms"] = round((time.process_time() - mine) * 1000
                                            / len(bodies), 3)
        out["record_server_cpu_ms"] = round((await server_cpu() - cpu) * 1000 / len(bodies),
                                            3)

        begun, cpu = time.perf_counter(), await server_cpu()
        async with session.get(url + "/api/master/products") as r:
            raw = await r.read()
            encoding = r.headers.get("Content-Encoding", "identity")
            wire = r.content_length or 0
        full = json.loads(raw)
        out["full_read"] = {"ms": round((time.perf_counter() - begun) * 1000, 1),
                            "server_cpu_ms": round((await server_cpu() - cpu) * 1000, 1),
                            "records": len(full["records"]), "bytes": len(raw),
                            "encoding": encoding, "wire_bytes": wire or len(raw)}
        out["delta_read"] = await _delta_reads(session, url, full["sync_cursor"],
                                               server_cpu)
        out["answer"], out["event"], out["after_answer"], out["subscribed_server_cpu_ms"] = \
            await _event_latency(session, url, events, server_cpu)
    return out


async def _delta_reads(session: aiohttp.ClientSession, url: str, cursor: str,
                       server_cpu: Callable[[], Awaitable[float]], rounds: int = 20
                       ) -> dict[str, Any]:
    """Rounds of: one product edited through the API, then a read since the last
    cursor (timed: wall, and server CPU)."""
    samples, cpu_ns, size = [], 0, 0
    for i in range(rounds):
        async with session.put(url + f"/api/master/products/prod-{(i * 389) % 20000:06d}",
                               json={"price": 999 + i}) as r:
            assert r.status == 200, await r.text()
        await asyncio.sleep(0.01)  # the event bus's own work on that commit is done
        before = await server_cpu()
        t0 = time.perf_counter_ns()
        async with session.get(url + "/api/master/products", params={"since": cursor}) as r:
            raw = await r.read()
        answer = json.loads(raw)
        samples.append(time.perf_counter_ns() - t0)
        cpu_ns += int((await server_cpu() - before) * 1e9)
        assert len(answer["records"]) == 1, answer
        cursor, size = answer["sync_cursor"], len(raw)
    row = summarise("delta read after one edit", samples, 0).__dict__
    return row | {"server_cpu_ms": round(cpu_ns / rounds / 1e6, 3), "bytes": size}


async def _event_latency(session: aiohttp.ClientSession, url: str,
                         bodies: list[dict[str, Any]],
                         server_cpu: Callable[[], Awaitable[float]]
                         ) -> tuple[Latency, Latency, Latency, float]:
    """From sending a sale: to its answer, and to its ``entry`` event; and from the
    answer to the event (0 when the event came first: the server publishes on commit,
    before it writes the answer); and the server's CPU per sale meanwhile (its events
    published and streamed too)."""
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
        cpu = await server_cpu()
        for body in bodies:
            sent = time.perf_counter_ns()
            async with session.post(url + "/api/entries", json={
                    "kind": "sale", "body": body, "client_id": str(uuid.uuid4())}) as r:
                client_id = (await r.json())["entry"]["client_id"]
                answered = time.perf_counter_ns()
            while client_id not in arrived:
                wake.clear()
                await asyncio.wait_for(wake.wait(), 10)
            answers.append(answered - sent)
            events.append(arrived[client_id] - sent)
            after.append(max(0, arrived[client_id] - answered))
        cpu_ms = (await server_cpu() - cpu) * 1000 / len(bodies)
        reader.cancel()
    seconds = time.perf_counter() - started
    return (summarise("sent -> answer", answers, seconds),
            summarise("sent -> SSE event", events, seconds),
            summarise("answer -> SSE event", after, seconds), round(cpu_ms, 3))


async def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    path = root / "till"
    progress(f"building a store with {args.products} products")
    await build(path, args.products)
    bodies = sale_bodies(args.sales * 2 + args.events, seed=11)
    progress(f"{args.sales} sales through Till.record in-process")
    local, local_cpu = await in_process(path, bodies[:args.sales])
    progress(f"{args.edits} price edits: which records each changed")
    commits = await commit_cost(path, args.edits)
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tillsync.tools.bench_api", "--serve", str(path),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        stdin, stdout = child.stdin, child.stdout
        assert stdout is not None and stdin is not None
        url = (await stdout.readline()).decode().strip()

        async def server_cpu() -> float:
            stdin.write(b"cpu\n")
            await stdin.drain()
            return float(await stdout.readline())

        progress(f"{args.sales} sales through the HTTP API at {url}")
        remote = await over_http(url, owner_token(path), bodies[args.sales:2 * args.sales],
                                 bodies[2 * args.sales:], server_cpu)
    finally:
        if child.stdin is not None:
            child.stdin.close()
        await asyncio.wait_for(child.wait(), 30)
    report: dict[str, Any] = {
        "machine": machine(), "in_process": local.__dict__, "in_process_cpu_ms": local_cpu,
        "commit_cost": commits,
        **{k: (v.__dict__ if isinstance(v, Latency) else v) for k, v in remote.items()}}
    report["api_cost_p50_ms"] = round(report["record"]["p50"] - local.p50, 3)
    report["api_cost_cpu_ms"] = round(report["record_server_cpu_ms"] - local_cpu, 3)
    return report


async def history(root: Path, sales: int, rounds: int = 5) -> dict[str, Any]:
    """The ticket history's newest page and a page within a range: from the ticket
    indexes, and by the whole-log scan that preceded them."""
    path = root / "till"
    till = await sales_store(path)
    try:
        bodies = sale_bodies(1000, seed=5)
        for start in range(0, sales, 1000):
            await asyncio.gather(*(till.record("sale", bodies[i % 1000])
                                   for i in range(start, min(sales, start + 1000))))
            if start % 20_000 == 0:
                progress(f"history: {start + 1000} sales recorded")
        newest = await till.tickets(limit=sales)
        middle = newest[len(newest) // 2][0].client_created_at
        ranges: dict[str, tuple[str | None, str | None]] = {
            "newest 100": (None, None), "100 before the middle": (None, middle)}

        async def scan(start: str | None, end: str | None) -> list[str]:
            receipts = {r["client_id"]: r for r in await till.receipts()}
            rows = [e for e in await till.entries("sale") if e.ticket
                    and (start is None or e.client_created_at >= start)
                    and (end is None or e.client_created_at < end)]
            rows.sort(key=lambda e: (e.client_created_at, e.ticket or ""), reverse=True)
            return [f"{e.ticket}{receipts.get(e.client_id)}" for e in rows[:100]]

        async def indexed(start: str | None, end: str | None) -> list[str]:
            return [f"{e.ticket}{r}" for e, r in await till.tickets(start, end, 100)]

        out: dict[str, Any] = {"sales": len(newest), "cpu_ms_per_page_p50": {}}
        for label, (since, until) in ranges.items():
            times: dict[str, list[int]] = {"indexed": [], "scan": []}
            for i in range(rounds):
                answers = []
                for way in ("indexed", "scan") if i % 2 else ("scan", "indexed"):
                    t0 = time.process_time_ns()
                    answers.append(await (indexed if way == "indexed" else scan)(since, until))
                    times[way].append(time.process_time_ns() - t0)
                assert answers[0] == answers[1] and len(answers[0]) == 100
            out["cpu_ms_per_page_p50"][label] = {
                way: round(sorted(ns)[len(ns) // 2] / 1e6, 2) for way, ns in times.items()}
        return out
    finally:
        await till.close()


def render(report: dict[str, Any]) -> str:
    m = report["machine"]

    def lat(row: dict[str, Any]) -> str:
        return (f"{row['label']:<26} n={row['count']:<5} p50 {row['p50']:.2f} ms  "
                f"p99 {row['p99']:.2f} ms  max {row['max']:.2f} ms")

    full, commits = report["full_read"], report["commit_cost"]
    return "\n".join([
        f"machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}",
        lat(report["in_process"]) + f"  CPU {report['in_process_cpu_ms']:.3f} ms/call",
        lat(report["record"]) + f"  server CPU {report['record_server_cpu_ms']:.3f} ms/req"
        f" (client {report['record_client_cpu_ms']:.3f})",
        f"API cost over Till.record: p50 {report['api_cost_p50_ms']:.3f} ms wall, "
        f"{report['api_cost_cpu_ms']:.3f} ms server CPU per request",
        f"full read of {full['records']} products: {full['ms']:.1f} ms "
        f"(server CPU {full['server_cpu_ms']:.1f} ms), {full['bytes']:,} bytes of JSON, "
        f"{full['wire_bytes']:,} on the wire ({full['encoding']})",
        lat(report["delta_read"]) + f"  server CPU {report['delta_read']['server_cpu_ms']:.3f}"
        f" ms/read, {report['delta_read']['bytes']} bytes",
        lat(report["answer"]) + f"  server CPU {report['subscribed_server_cpu_ms']:.3f} "
        "ms/sale with an event subscriber", lat(report["event"]), lat(report["after_answer"]),
        f"records changed by one price edit, {commits['products']} products, CPU p50: "
        f"{commits['from_operations']['p50']:.3f} ms from its operations, "
        f"{commits['whole_diff']['p50']:.3f} ms by a whole-document diff "
        f"({commits['edits']} edits)",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sales", type=int, default=1000, help="sales per side")
    parser.add_argument("--products", type=int, default=20_000, help="catalogue size")
    parser.add_argument("--events", type=int, default=200, help="sales timed to their event")
    parser.add_argument("--edits", type=int, default=50,
                        help="price edits timed for the event bus's work per commit")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--history", type=int, metavar="N",
                        help="only the ticket history, of a till holding N sales")
    parser.add_argument("--serve", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        asyncio.run(serve_child(Path(args.serve)))
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        if args.history:
            report = {"machine": machine(),
                      "history": asyncio.run(history(Path(tmp), args.history))}
            print(json.dumps(report, indent=2))
            return 0
        report = asyncio.run(run(args, Path(tmp)))
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

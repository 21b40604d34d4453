"""The baseline run: the naive REST back end (``tools.naive_rest``), one request and one
transaction per sale."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tillsync.tools.bench_relay.load import TillLoad
from tillsync.tools.bench_relay.procs import Server, cpu_delta, us_per_sale
from tillsync.tools.bench_relay.relay_run import summarise_ms
from tillsync.tools.workload import (
    progress,
)

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
        "server_cpu_us_per_sale": us_per_sale(cpu_delta(cpu1, cpu0, wall), sales),
        "loadgen_cpu_pct": round(100 * (self1 - self0) / wall, 1),
        "loadgen_cpu_us_per_sale": round(1e6 * (self1 - self0) / sales, 1),
        "server_exit": code,
        "check": check_baseline_db(db, loads),
    }

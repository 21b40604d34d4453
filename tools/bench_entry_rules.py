"""Micro-benchmark of the per-entry rules the relay adds to ``prepare``: the canonical
form of the body (``peer.entry_rules.is_canonical``), the client_id pattern and a sale's
negative-line check, on the sales ``tools.bench_relay`` sends (1-5 lines, about one in
four weighed), against the whole of ``relay.prepare.prepare`` for the same entries; and
the counter's rules a till adds to ``Till.record`` for a sale (``peer.counter_rules``:
inactive products read from the master document, the balance a sale raises).

It also times the parts of ``prepare`` one by one: decoding the body (msgpack), the
schema check, the entry's hash (its head packed, then SHA-256), packing the decoded body
again (what the canonical-form check compares), the lines' amounts.  Decoding, packing
and hashing run in C libraries (msgpack, OpenSSL): their sum is what preparing an entry
costs however its Python part were written.  The hash is timed as ``Entry.hash``
computes it but without the entry's cached property around it; ``prepare`` on fresh
``Entry`` objects each run (an entry caches its hash), less the cost of making them;
everything with the relay process's garbage collector settings (``relay.server.tune_gc``).

    python -m tillsync.tools.bench_entry_rules              # 20,000 sales, best of 15
    python -m tillsync.tools.bench_entry_rules --sales 5000 --json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import time
import uuid
from collections.abc import Callable
from typing import Any

import msgpack

from tillsync.peer.counter_rules import inactive_problem, raised_balances
from tillsync.peer.entry_rules import client_id_problem, is_canonical, negative_line
from tillsync.peer.identity import DeviceKey
from tillsync.peer.log import GENESIS_PREV, Entry, seal
from tillsync.peer.log.entry import canonical_bytes
from tillsync.peer.master import MasterData
from tillsync.peer.totals import line_figures
from tillsync.relay.prepare import decode_body, prepare
from tillsync.relay.server import tune_gc
from tillsync.schemas.validate import validate_entry
from tillsync.tools.workload import positive_int, products_for_sales, sale_body


def entries(count: int, seed: int) -> list[Entry]:
    rng = random.Random(seed)
    catalogue = products_for_sales()
    pieces = [p for p in catalogue if p.startswith("piece-")]
    weighed = [p for p in catalogue if p.startswith("kg-")]
    key, device, shift = DeviceKey.generate(), str(uuid.uuid4()), str(uuid.uuid4())
    out, prev = [], GENESIS_PREV
    for n in range(1, count + 1):
        entry = seal(key, body=sale_body(rng, catalogue, pieces, weighed, shift),
                     client_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                     device_id=device, seq=n, prev=prev, kind="sale",
                     client_created_at="2025-03-01T08:00:00.000Z", ticket=f"T01-{n:06d}")
        out.append(entry)
        prev = entry.hash
    return out


def best_us(run: Callable[[], object], count: int, repeats: int) -> float:
    """The fastest of ``repeats`` runs, in µs of CPU per entry (CPU time: less swayed
    by other processes on a busy machine than the wall clock)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        run()
        best = min(best, time.process_time() - start)
    return best / count * 1e6


def _validated(kind: str, body: dict[str, Any]) -> bool:
    validate_entry(kind, body)  # raises on a schema violation
    return True


def fresh_us(run: Callable[[list[Entry]], object], sales: list[Entry], repeats: int
             ) -> float:
    """``best_us`` of ``run`` on new copies of ``sales`` each time (nothing cached on
    them), less the cost of making the copies."""
    def copies() -> list[Entry]:
        return [Entry(e.client_id, e.device_id, e.seq, e.prev, e.kind, e.client_created_at,
                      e.ticket, e.body_bytes, e.sig) for e in sales]

    made = best_us(copies, len(sales), repeats)
    return max(0.0, best_us(lambda: run(copies()), len(sales), repeats) - made)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sales", type=positive_int, default=20_000)
    parser.add_argument("--repeats", type=positive_int, default=15)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    sales = entries(args.sales, args.seed)
    tune_gc()  # the relay process's garbage collector settings
    bodies = [msgpack.unpackb(e.body_bytes, raw=False) for e in sales]
    pairs = list(zip(sales, bodies, strict=True))
    figures = [[a for a, _ in line_figures(b["lines"])] for b in bodies]
    n, r = len(sales), args.repeats
    master = MasterData.new(uuid.uuid4().bytes)
    for product_id, record in products_for_sales().items():
        master.put("products", product_id, record)
    result: dict[str, Any] = {
        "sales": n,
        "canonical_us": best_us(lambda: [is_canonical(e.body_bytes, b) for e, b in pairs], n, r),
        "client_id_us": best_us(lambda: [client_id_problem(e.client_id) for e in sales], n, r),
        "negative_line_us": best_us(
            lambda: [negative_line(b["lines"], f) for b, f in zip(bodies, figures,
                                                                   strict=True)], n, r),
        "prepare_us": fresh_us(prepare, sales, r),
        "parts_us": {
            "decode": best_us(lambda: [decode_body(e) for e in sales], n, r),
            "schema": best_us(lambda: [_validated(e.kind, b) for e, b in pairs], n, r),
            "hash": best_us(lambda: [hashlib.sha256(canonical_bytes(
                e.client_id, e.device_id, e.seq, e.prev, e.kind, e.client_created_at,
                e.ticket, e.body_bytes)).digest() for e in sales], n, r),
            "pack_again": best_us(lambda: [msgpack.packb(b, use_bin_type=True)
                                           for b in bodies], n, r),
            "line_figures": best_us(lambda: [line_figures(b["lines"]) for b in bodies], n, r),
        },
        "counter_rules_us": best_us(
            lambda: [(inactive_problem("sale", b, master.fields), raised_balances("sale", b))
                     for b in bodies], n, r),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{n} sales, best of {r} runs, µs per entry: canonical form "
              f"{result['canonical_us']:.2f}, client_id {result['client_id_us']:.2f}, "
              f"negative line {result['negative_line_us']:.2f}; the whole prepare "
              f"{result['prepare_us']:.2f}; the till's counter rules "
              f"{result['counter_rules_us']:.2f}")
        parts = result["parts_us"]
        in_c = parts["decode"] + parts["pack_again"] + parts["hash"]
        print("parts of prepare, µs per entry: " + ", ".join(
            f"{name.replace('_', ' ')} {value:.2f}" for name, value in parts.items())
            + f"; in C libraries (decode + pack again + hash) {in_c:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

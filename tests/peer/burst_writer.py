"""A real writer process for the durability tests (tests/peer/test_durability.py).

    python -m tests.peer.burst_writer log  DIR SEED BASE        # sales, puts, stock moves
    python -m tests.peer.burst_writer puts DIR SEED BASE PAUSE  # product puts, compaction
    python -m tests.peer.burst_writer hold DIR                  # hold the write lock, idle

It writes forever until killed.  After EACH call returns it prints one line, flushed, so
the test knows exactly which writes the store acknowledged before the crash:

    entry KIND CLIENT_ID SEQ TICKET   TICKET is "-" for entries without one
    put COLLECTION ID PRICE           PRICE grows monotonically within a process
    compact start                     puts mode: a master-document compaction begins,
    compact inside                    ... has written its transaction (new snapshot, old
                                      chunks deleted) and sleeps PAUSE s before COMMIT,
    compact done                      ... has committed

``SEED`` makes the sequence of operations reproducible; ``BASE`` offsets prices and new
record ids so that several runs on one store never reuse them.
"""

from __future__ import annotations

import asyncio
import random
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tests.doubles import sale
from tillsync.peer.store import Till

POOL = [f"pool-{i}" for i in range(5)]  # records updated again and again, never concurrently


def say(*words: object) -> None:
    print(*words, flush=True)


class Writer:
    def __init__(self, till: Till, rng: random.Random, base: int) -> None:
        self.till = till
        self.rng = rng
        self.counter = base

    def next_number(self) -> int:
        self.counter += 1
        return self.counter

    async def sale(self) -> None:
        rng = self.rng
        lines: list[tuple[str, int | str, int]] = []
        for _ in range(rng.randint(1, 3)):
            product = rng.choice(["bread", "cheese", "tomato"])
            qty: int | str = rng.choice([1, 2, 3, "0.5", "0.75", "1.25"])
            if product == "bread":
                qty = rng.randint(1, 4)
            lines.append((product, qty, rng.randint(100, 2000)))
        entry = await self.till.record("sale", sale(*lines))
        say("entry", entry.kind, entry.client_id, entry.seq, entry.ticket or "-")

    async def stock_move(self) -> None:
        body = {"product_id": "bread", "direction": "in", "qty": self.rng.randint(1, 50),
                "reason": "delivery"}
        entry = await self.till.record("stock_move", body)
        say("entry", entry.kind, entry.client_id, entry.seq, entry.ticket or "-")

    async def put(self, record_id: str | None = None) -> None:
        price = self.next_number()
        record_id = record_id or f"new-{price}"
        await self.till.put("products", record_id, {"name": f"Product {record_id}",
                                                    "sku": f"S{price}", "price": price})
        say("put", "products", record_id, price)

    async def burst(self, ops: list[Callable[[], Awaitable[None]]]) -> None:
        """Many calls at once: the writer commits them together (group commit)."""
        await asyncio.gather(*(op() for op in ops))


async def log_mode(till: Till, rng: random.Random, base: int) -> None:
    writer = Writer(till, rng, base)
    while True:
        roll = rng.random()
        if roll < 0.35:
            await writer.sale()
        elif roll < 0.65:
            ops: list[Callable[[], Awaitable[None]]] = [
                writer.sale for _ in range(rng.randint(2, 25))]
            if rng.random() < 0.5:
                ops.insert(rng.randrange(len(ops) + 1), writer.stock_move)
            if rng.random() < 0.5:
                ops.insert(rng.randrange(len(ops) + 1), writer.put)
            await writer.burst(ops)
        elif roll < 0.8:
            await writer.put(rng.choice(POOL))
        elif roll < 0.9:
            await writer.stock_move()
        else:
            await writer.burst([writer.put for _ in range(rng.randint(2, 10))])


async def puts_mode(till: Till, rng: random.Random, base: int, pause: float) -> None:
    # Make compaction visible from outside: wrap the storage calls it is made of.
    db: Any = till._db
    compact, compact_inside = db.compact, db.compact_inside

    async def announced(snapshot: bytes) -> None:
        say("compact start")
        await compact(snapshot)
        say("compact done")

    async def paused_inside(snapshot: bytes) -> None:
        await compact_inside(snapshot)
        say("compact inside")  # new snapshot written, old chunks deleted, not committed
        await asyncio.sleep(pause)  # a window for the test's kill

    db.compact, db.compact_inside = announced, paused_inside
    writer = Writer(till, rng, base)
    while True:
        if rng.random() < 0.2:
            await writer.put(rng.choice(POOL))
        else:
            await writer.burst([writer.put for _ in range(rng.randint(1, 200))])


async def main(argv: list[str]) -> None:
    mode, path = argv[0], Path(argv[1])
    till = await Till.open(path)
    if mode == "hold":
        say("ready")
        await asyncio.sleep(3600)
        return
    seed, base = int(argv[2]), int(argv[3])
    if mode == "log":
        await log_mode(till, random.Random(seed), base)
    else:
        await puts_mode(till, random.Random(seed), base, float(argv[4]))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))

"""A till's front end as its own process, for the real-process fault test: records sales
(and now and then a price edit) and syncs every few sales, printing each acknowledgement
the moment its call returns, so whatever was printed before a ``kill -9`` is known to
have been committed.

    python -m tests.sim.till_worker DIR URL SEED COUNT
"""

from __future__ import annotations

import asyncio
import random
import sys
import uuid
from pathlib import Path
from typing import Any

from tests.sim.world import line_total
from tillsync.peer.client import SyncError, sync_once
from tillsync.peer.store import Till


async def work(path: Path, url: str, seed: int, count: int) -> None:
    rng = random.Random(seed)
    async with await Till.open(path, wait=10) as till:
        open_shifts = [s["shift_client_id"] for s in await till.shifts() if s["open"]]
        if open_shifts:
            shift = open_shifts[0]
        else:
            shift = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            await till.record("shift_open", {"cashier_id": "c-ann", "opening_cash": 5000},
                              client_id=shift)
            print("ACK", shift, flush=True)
        products = sorted(till.master.ids("products"))
        for k in range(count):
            if rng.random() < 0.1:
                pid = rng.choice(products)
                await till.put("products", pid, {"price": rng.randint(100, 2000)})
                print("PUT", pid, flush=True)
            lines: list[dict[str, Any]] = []
            for pid in rng.sample(products, rng.randint(1, 2)):
                product = till.get("products", pid)
                assert product is not None
                qty = rng.choice(("0.5", "1.25")) if product["volatile"] else rng.randint(1, 3)
                lines.append({"product_id": pid, "qty": qty,
                              "unit_price": int(product["price"])})
            total = sum(line_total(line) for line in lines)
            client_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            await till.record("sale", {"lines": lines, "shift_client_id": shift,
                                       "payments": [{"method": "cash", "amount": total}],
                                       "client_total": total}, client_id=client_id)
            print("ACK", client_id, flush=True)
            if k % 4 == 3:
                try:
                    await sync_once(till, url, within=5.0, settle=0.05)
                    print("SYNCED", flush=True)
                except SyncError as exc:
                    print("SYNCFAIL", exc.code, flush=True)


def main() -> int:
    path, url, seed, count = sys.argv[1:5]
    asyncio.run(work(Path(path), url, int(seed), int(count)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``tillsync demo``: a relay and three tills on this machine, through an outage.

1. A relay starts (a separate process) and three tills enroll with one-time codes.
2. The back office (till 1) loads the catalogue; every till syncs it.
3. Each till opens a shift and sells; the relay numbers the sales.
4. The relay goes down.  The tills keep selling: provisional tickets, nothing lost.
5. The relay comes back.  Every till syncs; the offline sales get the next official,
   gapless invoice numbers, and every till knows every ticket's invoice.

Everything lives in a scratch folder (``--dir`` to choose it), so you can look around
afterwards with ``tillsync peer status|receipts|stock DIR/till1``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import sys
import tempfile
import uuid
from pathlib import Path

from peer.client import SyncError, init_enrolled, sync_once
from peer.store import Till
from peer.totals import sale_total
from relay.server import Relay

STORE = "demo-shop"
CATALOGUE = {
    "bread": {"name": "Sourdough loaf", "sku": "BRD-1", "price": 420, "reorder_level": "10"},
    "milk": {"name": "Milk 1 l", "sku": "MLK-1", "price": 119, "reorder_level": "12"},
    "tomato": {"name": "Tomatoes", "sku": "TOM-KG", "price": 390, "unit": "kg",
               "volatile": True},
}
BASKETS: list[list[tuple[str, int | str, int]]] = [
    [("bread", 2, 420), ("milk", 3, 119)],
    [("tomato", "0.75", 410)],
    [("bread", 1, 420), ("tomato", "1.2", 395)],
]


def _say(text: str = "") -> None:
    print(text, flush=True)


class RelayProcess:
    """``tillsync relay serve`` as a child process."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""

    async def start(self, port: int = 0) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tools.cli", "relay", "serve", "--data", str(self.data),
            "--port", str(port), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert self.proc.stdout is not None
        line = (await asyncio.wait_for(self.proc.stdout.readline(), 20)).decode()
        found = re.search(r"ws://[\d.]+:(\d+)", line)
        if not found:
            raise RuntimeError(f"the relay did not start: {line!r}")
        self.url = f"ws://127.0.0.1:{found.group(1)}"

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            await self.proc.wait()


async def _sell(till: Till, shift: str, basket: list[tuple[str, int | str, int]]) -> str:
    total = sale_total({"qty": q, "unit_price": p} for _, q, p in basket)
    entry = await till.record("sale", {
        "lines": [{"product_id": p, "qty": q, "unit_price": u} for p, q, u in basket],
        "payments": [{"method": "cash", "amount": total}],
        "shift_client_id": shift, "client_total": total})
    return entry.ticket or ""


async def run(root: Path) -> int:
    relay = RelayProcess(root / "relay")
    relay_obj = await Relay.open(relay.data)  # codes are made on the relay's own data
    codes = [await relay_obj.new_code(STORE, f"Till {n}") for n in (1, 2, 3)]
    await relay_obj.close()
    await relay.start()
    try:
        _say(f"== relay up at {relay.url} (data in {relay.data})")
        paths = [root / f"till{n}" for n in (1, 2, 3)]
        for n, (path, code) in enumerate(zip(paths, codes, strict=True), start=1):
            info = await init_enrolled(path, name=f"Till {n}", url=relay.url, code=code)
            _say(f"   till {n} enrolled: device {info['device_id'][:8]}, tickets "
                 f"{info['series']}-000001...")
        tills = [await Till.open(p) for p in paths]
        try:
            return await _story(relay, tills)
        finally:
            for till in tills:
                await till.close()
    finally:
        await relay.stop()


async def _story(relay: RelayProcess, tills: list[Till]) -> int:
    office = tills[0]
    for product_id, product in CATALOGUE.items():
        await office.put("products", product_id, product)
    await office.put("cashiers", "ann", {"name": "Ann", "role": "cashier", "pin": "4821"})
    await office.record("stock_move", {"product_id": "bread", "direction": "in", "qty": 40,
                                       "reason": "morning delivery"})
    for till in tills:
        await sync_once(till)
    for till in tills:  # the catalogue reaches till 2 and 3 on this second round
        await sync_once(till)
    _say(f"\n== catalogue of {len(CATALOGUE)} products synced to every till: "
         + ", ".join(f"till {n + 1} sees {len(t.all('products'))}" for n, t in enumerate(tills)))

    shifts = []
    for till in tills:
        shift = str(uuid.uuid4())
        await till.record("shift_open", {"cashier_id": "ann", "opening_cash": 15000},
                          client_id=shift)
        shifts.append(shift)
    _say("\n== online: each till sells one basket")
    for till, shift in zip(tills, shifts, strict=True):
        await _sell(till, shift, BASKETS[0])
        await sync_once(till)

    await relay.stop()
    _say("\n== the relay is DOWN; the tills keep selling")
    offline: list[str] = []
    for n, (till, shift) in enumerate(zip(tills, shifts, strict=True)):
        for basket in BASKETS[1:]:
            offline.append(await _sell(till, shift, basket))
        try:
            await sync_once(till, within=3)
        except SyncError as exc:
            waiting, _ = await till.pending(limit=0)
            _say(f"   till {n + 1}: sync failed ({exc.code}); {waiting} entries kept pending")
    _say(f"   provisional tickets printed offline: {', '.join(offline)}")

    await relay.start(port=int(relay.url.rsplit(":", 1)[1]))
    _say(f"\n== the relay is back at {relay.url}; every till syncs")
    for till in tills:
        await sync_once(till)
    for till in tills:  # pick up the receipts of the others' sales too
        await sync_once(till)

    _say("\n   ticket        -> official invoice   (as till 1 sees it)")
    receipts = [r for r in await tills[0].receipts() if r["kind"] == "sale"]
    for r in sorted(receipts, key=lambda r: r["invoice_no"]):
        _say(f"   {r['ticket']:<13} -> {r['series']}-{r['invoice_no']:06d}  "
             f"total {r['total'] / 100:6.2f}")
    numbers = sorted(r["invoice_no"] for r in receipts)
    gapless = numbers == list(range(1, len(numbers) + 1))
    pending = [(await t.pending(limit=0))[0] for t in tills]
    offline_numbered = all(any(r["ticket"] == t for r in receipts) for t in offline)
    ok = gapless and not any(pending) and offline_numbered
    _say(f"\n== {len(numbers)} sales, invoice numbers 1..{len(numbers)}: "
         f"{'gapless, none twice' if gapless else 'NOT GAPLESS'}; offline sales numbered: "
         f"{'yes' if offline_numbered else 'NO'}; pending entries per till: {pending}")
    stock = {r["product_id"]: r for r in await tills[0].stock()}
    _say(f"   bread in stock at till 1 (own sales and delivery): {stock['bread']['qty']}")
    return 0 if ok else 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, help="where to make the relay and tills "
                        "(default: a new folder under the system's temporary directory)")


async def demo(args: argparse.Namespace) -> int:
    root = args.dir or Path(tempfile.mkdtemp(prefix="tillsync-demo-"))
    code = await run(root)
    _say(f"\nlook around: tillsync peer receipts {root}/till2; "
         f"tillsync peer status {root}/till3")
    return code

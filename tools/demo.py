"""``tillsync demo``: a relay and three tills on this machine, through an outage.

1. A relay starts (a separate process) and three tills enroll with one-time codes.
2. The back office (till 1) loads the catalogue; every till syncs it.
3. Every till starts its daemon (``peer run``): LAN links with the other two; only till
   2 reaches the relay.  Each till sells; the relay numbers the sales.
4. The internet goes down.  The back office changes a price: the other tills have it
   within milliseconds, over the LAN.  The tills keep selling (provisional tickets) and
   see each other's sales and the shop's stock.
5. The relay comes back.  Till 2 carries every till's entries up; the receipts spread
   over the LAN, and every till knows every ticket's official, gapless invoice number.

Everything lives in a scratch folder (``--dir`` to choose it), so you can look around
afterwards with ``tillsync peer status|receipts|stock DIR/till1``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from tillsync.peer.client import init_enrolled, sync_once
from tillsync.peer.lan.node import Node, NodeConfig
from tillsync.peer.store import Till
from tillsync.peer.totals import sale_total
from tillsync.relay.server import Relay
from tillsync.tools.ports import free_port

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
            sys.executable, "-m", "tillsync.tools.cli", "relay", "serve", "--data", str(self.data),
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
    # Till 1 is also the back office: only it may change prices and settings.
    codes = [await relay_obj.new_code(STORE, f"Till {n}", "backoffice" if n == 1 else "till")
             for n in (1, 2, 3)]
    await relay_obj.close()
    await relay.start()
    try:
        _say(f"== relay up at {relay.url} (data in {relay.data})")
        paths = [root / f"till{n}" for n in (1, 2, 3)]
        for n, (path, code) in enumerate(zip(paths, codes, strict=True), start=1):
            info = await init_enrolled(path, name=f"Till {n}", url=relay.url, code=code)
            _say(f"   till {n} enrolled: device {info['device_id'][:8]}, tickets "
                 f"{info['series']}-000001...")
        async with await Till.open(paths[0]) as office:
            await _catalogue(office)
        for path in paths:
            async with await Till.open(path) as till:
                await sync_once(till)
        return await _story(relay, paths)
    finally:
        await relay.stop()


async def _catalogue(office: Till) -> None:
    for product_id, product in CATALOGUE.items():
        await office.put("products", product_id, product)
    await office.put("cashiers", "ann", {"name": "Ann", "role": "cashier", "pin": "4821"})
    await office.record("stock_move", {"product_id": "bread", "direction": "in", "qty": 40,
                                       "reason": "morning delivery"})
    await sync_once(office)


async def _until(check: Callable[[], Awaitable[bool]], within: float = 30.0) -> float:
    """Poll ``check`` until it holds; returns the seconds it took."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > within:
            raise RuntimeError("the demo timed out waiting for the tills")
        await asyncio.sleep(0.005)
    return time.monotonic() - start


async def _story(relay: RelayProcess, paths: list[Path]) -> int:
    # Every till runs its daemon (what `tillsync peer run` does), linked on the LAN (here
    # loopback) with the others.  Only till 2 has an uplink to the relay: it carries the
    # shop's entries up and brings the receipts down; the LAN spreads them.
    ports = [free_port() for _ in paths]
    nodes = [Node(NodeConfig(path, lan_host="127.0.0.1", lan_port=port, mdns=False,
                             peers=[f"ws://127.0.0.1:{p}/" for p in ports[:n]],
                             interval=0.5, max_backoff=1.0, relay_enabled=(n == 1)))
             for n, (path, port) in enumerate(zip(paths, ports, strict=True))]
    tasks = [asyncio.create_task(node.run()) for node in nodes]
    try:
        await _until(lambda: _ready(nodes))
        tills = [node.till for node in nodes]
        assert all(tills)
        return await _outage(relay, nodes, [t for t in tills if t is not None])
    finally:
        for node in nodes:
            node.stop()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _ready(nodes: list[Node]) -> bool:
    return all(n.till is not None and sum(p.connected for p in n.peers.values()) == 2
               for n in nodes)


async def _outage(relay: RelayProcess, nodes: list[Node], tills: list[Till]) -> int:
    _say("\n== every till runs its daemon; LAN links: "
         + ", ".join(f"till {n + 1} <-> {len(node.peers)} others" for n, node in enumerate(nodes))
         + "; only till 2 reaches the relay")
    shifts = []
    for till in tills:
        shift = str(uuid.uuid4())
        await till.record("shift_open", {"cashier_id": "ann", "opening_cash": 15000},
                          client_id=shift)
        shifts.append(shift)
    _say("\n== online: each till sells one basket")
    online = [await _sell(till, shift, BASKETS[0]) for till, shift in zip(tills, shifts,
                                                                           strict=True)]
    await _until(lambda: _numbered(tills, online))
    _say("   numbered through till 2's uplink: every till holds every receipt")

    await relay.stop()
    _say("\n== the internet is DOWN (relay unreachable); the tills keep selling, on the LAN")
    await tills[0].put("products", "milk", {"price": 129})
    took = await _until(lambda: _all(tills, lambda t: (t.get("products", "milk") or {})
                                     .get("price") == 129))
    _say(f"   till 1 (back office) raises milk to 1.29: on tills 2 and 3, stored, in "
         f"{took * 1000:.0f} ms")
    offline: list[str] = []
    for till, shift in zip(tills, shifts, strict=True):
        for basket in BASKETS[1:]:
            offline.append(await _sell(till, shift, basket))
    entries = sum(t.heads().get(t.device_id, 0) for t in tills)
    took = await _until(lambda: _all(tills, lambda t: sum(t.heads().values()) == entries))
    _say(f"   provisional tickets printed offline: {', '.join(offline)}")
    _say(f"   every till holds all {entries} entries of the shop after {took * 1000:.0f} ms; "
         f"pending at the relay: {[(await t.pending(limit=0))[0] for t in tills]}")
    bread = [next(r["qty"] for r in await t.stock() if r["product_id"] == "bread")
             for t in tills]
    _say(f"   bread in stock as each till sees it (all tills' sales): {', '.join(bread)}")

    await relay.start(port=int(relay.url.rsplit(":", 1)[1]))
    _say(f"\n== the relay is back at {relay.url}; till 2 reconnects and carries the shop's "
         "entries up")
    took = await _until(lambda: _numbered(tills, online + offline), within=60)
    _say(f"   every till knows every invoice number {took:.1f} s later")

    _say("\n   ticket        -> official invoice   (as till 3 sees it, which never reached "
         "the relay)")
    receipts = [r for r in await tills[2].receipts() if r["kind"] == "sale"]
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
    return 0 if ok else 1


async def _all(tills: list[Till], check: Callable[[Till], bool]) -> bool:
    return all(check(t) for t in tills)


async def _numbered(tills: list[Till], tickets: list[str]) -> bool:
    for till in tills:
        held = {r.get("ticket") for r in await till.receipts("accepted")}
        if not set(tickets) <= held:
            return False
    return True




def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, help="where to make the relay and tills "
                        "(default: a new folder under the system's temporary directory)")


async def demo(args: argparse.Namespace) -> int:
    root = args.dir or Path(tempfile.mkdtemp(prefix="tillsync-demo-"))
    # The daemons log every failed relay round; the story below says what happens.
    logging.getLogger("tillsync").setLevel(logging.ERROR)
    code = await run(root)
    command = _command()
    _say(f"\nlook around: {command} peer receipts {root}/till2; "
         f"{command} peer status {root}/till3")
    return code


def _command() -> str:
    """How to call tillsync again from this shell: plain ``tillsync`` when it is on PATH
    (an activated environment), else the script's path (``.venv/bin/tillsync``)."""
    script = Path(sys.argv[0])
    if script.name != "tillsync" or shutil.which("tillsync") == str(script.resolve()):
        return "tillsync"
    try:
        return str(script.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(script)

"""The live events (``peer.http.events``) against a commit held in flight: a real store
whose database commit waits for the test, and a bus whose wake-ups the test paces, so
each interleaving happens exactly, without timing.

What must hold: nothing is published before its commit; a commit's events reach every
client subscribed before it completed, once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from tillsync.peer.http.events import EventBus
from tillsync.peer.store import Till

Event = tuple[str, dict[str, Any]]


class HeldCommits:
    """Makes the store's database commits wait, while ``hold`` is set, until ``release``.

    ``entered`` is set once a held commit has begun: the batch's ops have run (memory
    moved, rows written on the writer's connection) and its transaction is not done."""

    def __init__(self, till: Till, monkeypatch: pytest.MonkeyPatch) -> None:
        self.hold = False
        self.entered = asyncio.Event()
        self._gate = asyncio.Event()
        db = till._db
        for name in ("commit", "commit_changes"):  # a document-only batch: one statement
            monkeypatch.setattr(db, name, self._held(getattr(db, name)))

    def _held(self, real: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
        async def commit(*args: Any) -> None:
            if self.hold:
                self.entered.set()
                await self._gate.wait()
            await real(*args)
        return commit

    def release(self) -> None:
        self.hold = False
        self._gate.set()


class PacedBus:
    """An ``EventBus`` watching the store, each of its wake-ups let through by ``step``."""

    def __init__(self, till: Till, monkeypatch: pytest.MonkeyPatch) -> None:
        self.bus = EventBus()
        self._woke: asyncio.Queue[int] = asyncio.Queue()
        self._idle: asyncio.Queue[int] = asyncio.Queue()
        self._go = asyncio.Semaphore(0)
        real = till.wait_changed

        async def wait_changed(seen: int, within: float | None = None) -> int:
            self._idle.put_nowait(seen)  # done with everything before: about to wait
            version = await real(seen, within)
            self._woke.put_nowait(version)
            await self._go.acquire()
            return version

        monkeypatch.setattr(till, "wait_changed", wait_changed)
        self.task = asyncio.create_task(self.bus.watch(till))

    async def started(self) -> None:
        """Until the bus has read where things stand and waits for the first commit."""
        await self._idle.get()

    async def woken(self) -> None:
        """Until the bus is woken by a commit (it then waits for ``step``)."""
        await self._woke.get()

    async def step(self) -> None:
        """Let the woken bus read and publish, and wait until it is done."""
        self._go.release()
        await self._idle.get()


def drain(queue: asyncio.Queue[Event | None]) -> list[Event | None]:
    return [queue.get_nowait() for _ in range(queue.qsize())]


SHIFT = str(uuid.uuid4())


def sale(price: int) -> dict[str, Any]:
    return {"lines": [{"product_id": "x", "qty": 1, "unit_price": price}],
            "payments": [{"method": "cash", "amount": price}], "shift_client_id": SHIFT}


async def ready_to_sell(till: Till) -> None:
    """A cashier, product ``x`` and the open shift ``SHIFT``: what ``sale`` needs."""
    await till.put("cashiers", "ann", {"name": "Ann", "role": "cashier", "pin": "1234"})
    await till.put("products", "x", {"name": "X", "sku": "x", "price": 100})
    await till.record("shift_open", {"cashier_id": "ann", "opening_cash": 0},
                      client_id=SHIFT)


@asynccontextmanager
async def shop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
               ) -> AsyncIterator[tuple[Till, HeldCommits, PacedBus]]:
    await Till.init(tmp_path / "t", name="T1")
    async with await Till.open(tmp_path / "t") as till:
        await ready_to_sell(till)
        held = HeldCommits(till, monkeypatch)
        paced = PacedBus(till, monkeypatch)
        await paced.started()
        try:
            yield till, held, paced
        finally:
            held.release()
            paced.task.cancel()
            await asyncio.gather(paced.task, return_exceptions=True)


def receipt(n: int) -> dict[str, Any]:
    return {"client_id": str(uuid.UUID(int=n)), "server_seq": n, "status": "accepted",
            "kind": "sale", "ticket": f"T1-{n:06d}", "device_id": "d"}


async def write(till: Till, kind: str, n: int) -> str:
    """One commit of ``kind``; returns what names it in its event."""
    if kind == "entry":
        return (await till.record("sale", sale(100 + n))).client_id
    if kind == "master":
        await till.put("products", f"p{n}", {"name": f"P{n}", "sku": f"p{n}", "price": n})
        return f"p{n}"
    r = receipt(n)
    await till.store_receipts([r], n, bytes([n]) * 32, "")
    return str(r["client_id"])


def named(event: Event | None) -> tuple[str, str]:
    assert event is not None
    kind, data = event
    if kind == "master":
        assert data["collection"] == "products" and data["deleted"] == [], data
        (record,) = data["changed"]
        return kind, record
    return kind, data["client_id"]


@pytest.mark.parametrize("kind", ["entry", "master", "receipt"])
@pytest.mark.parametrize("subscribed", ["before", "during"])
async def test_a_commit_in_flight_is_published_once_after_it_commits(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, subscribed: str) -> None:
    """Commit A is done and its wake-up waits; commit B has run its ops and waits on its
    database commit.  The bus then reads for A: it must publish A (if someone listens)
    and nothing of B.  A client subscribing at that point gets B, once, after B commits."""
    async with shop(tmp_path, monkeypatch) as (till, held, paced):
        queue = paced.bus.subscribe() if subscribed == "before" else None
        a = await write(till, kind, 1)
        await paced.woken()
        held.hold = True
        b_task = asyncio.create_task(write(till, kind, 2))
        await held.entered.wait()  # B's ops ran; its transaction is not committed
        await paced.step()  # the bus reads what A's wake-up brought
        if queue is None:
            queue = paced.bus.subscribe()
            assert drain(queue) == []
        else:
            assert [named(e) for e in drain(queue)] == [(kind, a)]
        held.release()
        b = await b_task
        await paced.woken()
        await paced.step()
        events = drain(queue)
        assert [named(e) for e in events] == [(kind, b)]
        if kind == "master":
            assert events[0] and events[0][1]["sync_cursor"] == ".".join(
                sorted(h.hex() for h in till.master.heads()))


async def test_a_bus_started_during_a_commit_publishes_it_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the bus starts from is what is committed, not what memory holds already."""
    await Till.init(tmp_path / "t", name="T1")
    async with await Till.open(tmp_path / "t") as till:
        await till.put("cashiers", "ann", {"name": "Ann", "role": "cashier", "pin": "1234"})
        held = HeldCommits(till, monkeypatch)
        held.hold = True
        shift = asyncio.create_task(till.record(
            "shift_open", {"cashier_id": "ann", "opening_cash": 0}, client_id=SHIFT))
        await held.entered.wait()
        paced = PacedBus(till, monkeypatch)
        queue = paced.bus.subscribe()
        await paced.started()
        held.release()
        await shift
        await paced.woken()
        await paced.step()
        assert [named(e) for e in drain(queue)] == [("entry", SHIFT)]
        paced.task.cancel()
        await asyncio.gather(paced.task, return_exceptions=True)


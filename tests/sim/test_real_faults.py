"""Real processes beside the simulation: tills (``tests/sim/till_worker.py``, recording and
syncing) and the relay (``tillsync relay serve``) killed with SIGKILL at random moments,
and partitions made by closing every socket between tills and relay (a TCP proxy in
this process), over many rounds.  Then the network heals, everyone syncs, and the same
invariants as the simulation's are checked on the real stores.

``TILLSYNC_FAULT_SEED`` replays a run; ``TILLSYNC_FAULT_ROUNDS`` makes it longer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest

from tests.relay.processes import ENV, Relays, TillDir, in_thread, store_key
from tests.sim.nodes import Violation
from tests.sim.world import CASHIERS, PRODUCTS, check_relay_db
from tillsync.peer.master import MasterData
from tillsync.peer.store import Till
from tillsync.peer.sync.receipts import verify_receipts

STORE = "store-faults"
ROUNDS = int(os.environ.get("TILLSYNC_FAULT_ROUNDS") or 5)


class CuttableProxy:
    """TCP between the tills and the relay.  ``cut(seconds)`` closes every connection
    through it at once and refuses new ones for that long: a partition made by closing
    sockets, as a pulled cable or a dead router would."""

    def __init__(self) -> None:
        self.target: int | None = None
        self.refuse_until = 0.0
        self.cuts = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def start(self) -> int:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self._loop).result(10)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if time.monotonic() < self.refuse_until or self.target is None:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}

    def cut(self, seconds: float) -> None:
        self.cuts += 1
        self.refuse_until = time.monotonic() + seconds

        def close_all() -> None:
            for writer in list(self._writers):
                writer.close()

        self._loop.call_soon_threadsafe(close_all)

    def stop(self) -> None:
        async def shut() -> None:
            for writer in list(self._writers):
                writer.close()
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()
            await asyncio.sleep(0.05)

        asyncio.run_coroutine_threadsafe(shut(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def worker(till: TillDir, url: str, seed: int, count: int,
           out: Path) -> subprocess.Popen[str]:
    """A till worker writing to the file ``out`` (a pipe nobody reads until the end would
    fill up and stall the worker)."""
    with out.open("w") as sink:
        return subprocess.Popen([sys.executable, "-m", "tests.sim.till_worker", str(till.path),
                                 url, str(seed), str(count)], stdout=sink,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                                env=ENV)


def acknowledged(out: Path) -> set[str]:
    """The client ids a worker printed as committed: whole ``ACK <id>`` lines only (a
    ``kill -9`` can cut the last line short; that entry then counts as not acknowledged,
    which only makes the check weaker, never wrong)."""
    ids = set()
    for line in out.read_text().splitlines(keepends=True):
        fields = line.split()
        if line.endswith("\n") and len(fields) == 2 and fields[0] == "ACK":
            ids.add(fields[1])
    return ids


def relay_db(data: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{data / 'relay.db'}?mode=ro", uri=True)


@pytest.mark.slow
def test_kill_9_and_cut_sockets_lose_and_double_nothing(tmp_path: Path) -> None:
    seed = int(os.environ.get("TILLSYNC_FAULT_SEED") or time.time_ns() % 1_000_000)
    print(f"fault seed: {seed} (TILLSYNC_FAULT_SEED={seed} replays its choices)")
    rng = random.Random(seed)
    proxy = CuttableProxy()
    port = proxy.start()
    url = f"ws://127.0.0.1:{port}"
    faults = {"till_kills": 0, "relay_kills": 0, "cuts": 0}
    acked: dict[str, set[str]] = {}
    try:
        with Relays(tmp_path / "relays") as relays:
            relay = relays.start()
            proxy.target = relay.port
            tills = [TillDir(tmp_path / f"till{i}", f"Till {i}") for i in range(2)]
            for till in tills:
                till.init(relay, STORE)
                acked[till.name] = set()
            records: list[tuple[str, str, dict[str, Any]]] = [
                ("products", pid, {"name": name, "sku": pid, "price": price,
                                   "volatile": volatile})
                for pid, (name, price, volatile, _) in PRODUCTS.items()]
            records += [("cashiers", c, {"name": c, "role": "cashier", "pin": "1234"})
                        for c in CASHIERS]
            tills[0].put_many(records)
            tills[0].sync(relay.url)
            tills[1].sync(relay.url)

            for rnd in range(ROUNDS):
                # Round 0's tills have more to record than any round lasts, so they are
                # still going at its end and are killed mid-work whatever the seed rolls.
                outs = {t.name: tmp_path / f"worker-{rnd}-{i}.out" for i, t in enumerate(tills)}
                procs = {t.name: worker(t, url, seed * 1000 + rnd * 10 + i,
                                        10_000 if rnd == 0 else rng.randint(8, 30), outs[t.name])
                         for i, t in enumerate(tills)}
                deadline = time.monotonic() + rng.uniform(1.0, 4.0)
                while time.monotonic() < deadline and any(p.poll() is None
                                                          for p in procs.values()):
                    time.sleep(rng.uniform(0.05, 0.4))
                    roll = rng.random()
                    if roll < 0.25:
                        victim = procs[rng.choice(sorted(procs))]
                        if victim.poll() is None:
                            victim.send_signal(signal.SIGKILL)
                            faults["till_kills"] += 1
                    elif roll < 0.40:
                        relay.kill()
                        faults["relay_kills"] += 1
                        relay.start()
                        proxy.target = relay.port
                    elif roll < 0.60:
                        proxy.cut(rng.uniform(0.0, 1.5))
                        faults["cuts"] += 1
                for name, proc in procs.items():
                    if proc.poll() is None:  # still going at the round's end: killed too
                        proc.send_signal(signal.SIGKILL)
                        faults["till_kills"] += 1
                    proc.wait(timeout=30)
                    assert proc.returncode in (0, -signal.SIGKILL), \
                        outs[name].read_text()[-3000:]
                    acked[name] |= acknowledged(outs[name])
                if not relay.alive:
                    relay.start()
                    proxy.target = relay.port

            # Healed: the relay stays up; everyone syncs until nothing is pending.
            proxy.refuse_until = 0.0
            for _ in range(4):
                for till in tills:
                    till.sync(relay.url)
            check_real_stores(relay.data, tills, acked)
    finally:
        proxy.stop()
    print(f"faults: {faults}; acknowledged entries: "
          f"{ {name: len(ids) for name, ids in acked.items()} }")
    assert faults["till_kills"] and sum(len(ids) for ids in acked.values()) > 20


def check_real_stores(data: Path, tills: list[TillDir], acked: dict[str, set[str]]) -> None:
    volatile = {pid: spec[2] for pid, spec in PRODUCTS.items()}
    db = relay_db(data)
    try:
        position = check_relay_db(db, STORE, volatile)
        held = {r[0] for r in db.execute("SELECT client_id FROM entries WHERE store = ?",
                                         (STORE,))}
        stream = [msgpack.unpackb(r[0], raw=False) for r in db.execute(
            "SELECT data FROM receipts WHERE store = ? ORDER BY server_seq", (STORE,))]
        doc = b"".join(bytes(r[0]) for r in db.execute(
            "SELECT data FROM doc_snapshot WHERE store = ?", (STORE,)))
        doc += b"".join(bytes(r[0]) for r in db.execute(
            "SELECT data FROM doc_changes WHERE store = ? ORDER BY id", (STORE,)))
    finally:
        db.close()
    good, _, problem = verify_receipts(store_key(data, STORE), stream, 0, bytes(32))
    assert (good, problem) == (len(stream), None)
    latest = {r["client_id"]: r for r in stream}
    reference = MasterData.load(doc, bytes(16)).to_py()

    for till_dir in tills:
        async def inspect(path: Path = till_dir.path) -> tuple[Any, ...]:
            async with await Till.open(path, readonly=True) as till:
                present = {e.client_id for e in await till.entries()}
                report = await till.verify()
                return (present, report.ok, report.to_json(), till.receipts_position()[0],
                        (await till.pending(limit=0))[0], till.master.to_py())

        present, ok, report, till_position, pending, document = in_thread(inspect)
        name = till_dir.name
        if not ok:
            raise Violation(f"{name} fails verify: {report}")
        lost = acked[name] - present
        if lost:
            raise Violation(f"{name} lost {len(lost)} acknowledged entries to kill -9")
        if acked[name] - held:
            raise Violation(f"the relay lacks {len(acked[name] - held)} of {name}'s entries")
        if pending or till_position != position:
            raise Violation(f"{name}: {pending} pending, receipts up to {till_position} of "
                            f"{position}")
        unaccepted = [c for c in present if latest.get(c, {}).get("status") != "accepted"]
        if unaccepted:
            raise Violation(f"{name}: {len(unaccepted)} entries not accepted")
        if document != reference:
            raise Violation(f"{name}'s master document differs from the relay's")

"""Several relay processes on one PostgreSQL database, really started.

* tills on two relay processes sell at once; one process is killed with SIGKILL in the
  middle of ingest: the other carries on, every sale ends numbered once, gapless, and
  every till holds the whole store's stream, whichever process decided it;
* receipts and document changes made through one process reach a device that stays
  connected to the other (LISTEN/NOTIFY);
* ``relay serve --workers 2``: two processes on one port (SO_REUSEPORT), a dead worker
  replaced;
* the database down at start (retried, then the relay comes up; or a clear error), and
  database connections cut in the middle of ingest (the batch retried or refused, never
  half-applied).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import automerge.core as am
import pytest

from tests.doubles import sale
from tests.relay.processes import (
    CLI_TIMEOUT,
    ENV,
    RawSession,
    RelayProcess,
    Relays,
    TillDir,
    in_thread,
    invoices,
    quick_code,
    relay_receipts,
    run_cli,
    store_key,
    stream_position,
)
from tests.relay.proxy import Proxy
from tests.relay.test_acceptance import PRODUCTS, _record_sales, assert_gapless
from tillsync.peer.client import enroll
from tillsync.peer.identity import DeviceKey
from tillsync.peer.master import MasterData
from tillsync.peer.store import Till
from tillsync.peer.sync.engine import DocMessage
from tillsync.peer.sync.receipts import verify_receipts

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture
def relays(tmp_path: Path, pg_db: str) -> Iterator[Relays]:
    with Relays(tmp_path, pg_db) as started:
        yield started


def sync_procs(targets: list[tuple[TillDir, str]]) -> list[subprocess.Popen[str]]:
    return [subprocess.Popen([sys.executable, "-m", "tillsync.tools.cli",
                              "peer", "sync", str(t.path),
                              "--once", "--json", "--relay", url],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                             stdin=subprocess.DEVNULL) for t, url in targets]


def finish(procs: list[subprocess.Popen[str]]) -> list[tuple[int, str, str]]:
    out = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=CLI_TIMEOUT)
            out.append((proc.returncode, stdout, stderr))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)
    return out


def sync_until_done(targets: list[tuple[TillDir, str]], context: object) -> None:
    """Sync every till until nothing is pending, then once more so each holds the whole
    stream of its store."""
    for _ in range(5):
        results = finish(sync_procs(targets))
        assert all(code == 0 for code, _, _ in results), (context, results)
        if all(json.loads(out)["pending"] == 0 for _, out, _ in results):
            break
    results = finish(sync_procs(targets))
    assert all(code == 0 and json.loads(out)["pending"] == 0 for code, out, _ in results), \
        (context, results)


def check_store(relay: RelayProcess, store: str, tills: list[TillDir],
                sales: dict[str, list[str]], context: str) -> None:
    """Gapless, once each, none lost; the stream whole and signed; every till of the
    store holds all of it and the relay's number for each of its sales."""
    recorded = {c for t in tills for c in sales[t.name]}
    assert_gapless(invoices(relay, store), recorded, context)
    stream = relay_receipts(relay, store)
    assert [r["server_seq"] for r in stream] == list(range(1, len(stream) + 1)), context
    assert stream_position(relay, store) == len(stream)
    assert verify_receipts(store_key(relay.data, store, relay.db), stream, 0,
                           bytes(32))[2] is None, context
    accepted = [r["client_id"] for r in stream if r["status"] == "accepted"]
    assert len(accepted) == len(set(accepted)), f"{context}: accepted twice"
    numbers = {r[2]: r[1] for r in invoices(relay, store)}
    for till in tills:
        async def read(path: Path = till.path) -> tuple[dict[str, int], int]:
            async with await Till.open(path, readonly=True) as opened:
                mine = {r["client_id"]: r["invoice_no"]
                        for r in await opened.receipts("accepted") if "invoice_no" in r}
                return mine, opened.receipts_position()[0]
        held, position = in_thread(read)
        assert position == len(stream), f"{context}: {till.name} lacks part of the stream"
        assert {c: held.get(c) for c in recorded} == {c: numbers[c] for c in recorded}, \
            f"{context}: {till.name} holds other invoice numbers than the relay"


# -- Done means: two processes, tills on each, kill -9 of one mid-ingest ----------------

STORES = {"multi-1": ["Till M1", "Till M2"], "multi-2": ["Till M3", "Till M4"]}
ROUNDS = 2
PER_ROUND = 100


async def test_two_relay_processes_one_killed_mid_ingest_number_every_sale_once(
        tmp_path: Path, relays: Relays) -> None:
    seed = int(os.environ.get("TILLSYNC_KILL_SEED") or time.time_ns() % 1_000_000)
    print(f"kill -9 seed: {seed} (TILLSYNC_KILL_SEED={seed} replays it)")
    rng = random.Random(seed)
    a = relays.start("relay-a")
    b = relays.start("relay-b", data=a.data)  # the same relay (its key), a second process
    tills: dict[str, list[TillDir]] = {}
    on: dict[str, RelayProcess] = {}
    for store, names in STORES.items():
        tills[store] = []
        for i, name in enumerate(names):
            till = TillDir(tmp_path / name.replace(" ", ""), name)
            on[name] = a if i % 2 == 0 else b  # each store has a till on each process
            till.init(on[name], store)
            tills[store].append(till)
    everyone = [t for ts in tills.values() for t in ts]
    shifts: dict[str, str | None] = {t.name: None for t in everyone}
    sales: dict[str, list[str]] = {t.name: [] for t in everyone}

    for round_no in range(ROUNDS):
        for till in everyone:
            shift, recorded = await _record_sales(till.path, shifts[till.name], PER_ROUND, rng)
            shifts[till.name] = shift
            sales[till.name] += recorded
        procs = sync_procs([(t, on[t.name].url) for t in everyone])
        assert a.wait_log(" connected", timeout=CLI_TIMEOUT), a.stderr()[-2000:]
        time.sleep(rng.uniform(0.0, 0.4))
        a.kill()
        results = dict(zip((t.name for t in everyone), finish(procs), strict=True))
        for till in everyone:
            code, _, err = results[till.name]
            if on[till.name] is b:  # the other process carried on
                assert code == 0, (seed, round_no, till.name, err)
            else:
                assert code in (0, 4), (seed, round_no, till.name, err)
        a.start()
        assert "internal error" not in b.stderr(), b.stderr()[-3000:]

    sync_until_done([(t, on[t.name].url) for t in everyone], seed)
    for store in STORES:
        check_store(a, store, tills[store], sales, f"seed {seed} store {store}:")


# -- receipts and documents reach devices on the other process --------------------------


async def test_receipts_and_document_changes_reach_a_device_on_the_other_process(
        tmp_path: Path, relays: Relays) -> None:
    a = relays.start("relay-a")
    b = relays.start("relay-b", data=a.data)
    store = "shared"
    till = TillDir(tmp_path / "till", "Till 1")
    till.init(a, store)
    key, device = DeviceKey.generate(), str(uuid.uuid4())
    await enroll(b.url, quick_code(b, store, "Office"), "Office", key, device)

    doc, sync = MasterData.new(os.urandom(16)), am.SyncState()

    handled = 0

    async def follow(session: RawSession, seconds: float) -> None:
        """Take the relay's document messages (also those read while waiting for
        receipts) and answer them, as a till does."""
        nonlocal handled
        await session.quiet(seconds)
        for event in session.events[handled:]:
            if isinstance(event, DocMessage):
                doc.receive_sync(sync, event.data)
                reply = doc.sync_message(sync)
                if reply is not None:
                    session.link.send_doc(reply)
                    await session.flush()
        handled = len(session.events)

    session = await RawSession.open(b.url, store, device, key)
    try:
        await follow(session, 0.5)
        # The till, on process A, makes master data and sells.
        till.put_many([("products", p, body) for p, body in PRODUCTS.items()]
                      + [("cashiers", "ann", {"name": "Ann", "role": "cashier", "pin": "1234"})])
        shift = str(uuid.uuid4())
        till.record("shift_open", {"cashier_id": "ann", "opening_cash": 0}, shift)
        sold = [till.record("sale", sale(("bread", 1, 320), shift_client_id=shift))["client_id"]
                for _ in range(3)]
        assert till.sync_json()["pending"] == 0
        # The device on process B never reconnected: both arrive all the same.
        got = await session.receipts_until(4, timeout=10)
        assert {r["client_id"]: r.get("invoice_no") for r in got if r["kind"] == "sale"} == {
            c: n for c, n in zip(sold, [1, 2, 3], strict=True)}
        deadline = time.monotonic() + 10
        while set(doc.all("products")) != set(PRODUCTS) and time.monotonic() < deadline:
            await follow(session, 0.3)
        assert set(doc.all("products")) == set(PRODUCTS)
    finally:
        await session.close()
    # And a till that first connects to B gets the catalogue made through A.
    other = TillDir(tmp_path / "till2", "Till 2")
    other.init(b, store)
    other.sync_json()
    assert set(other.master("products")) == set(PRODUCTS)


# -- relay serve --workers --------------------------------------------------------------


async def test_workers_share_one_port_and_a_dead_one_is_replaced(
        tmp_path: Path, relays: Relays) -> None:
    relay = relays.start("workers", extra=["--workers", "2"])
    first = (relay.logs / "relay-1.out").read_text()
    pids = [int(p) for p in re.search(r"worker processes: ([0-9, ]+);", first)
            .group(1).split(", ")]  # type: ignore[union-attr]
    assert len(pids) == 2
    tills = [TillDir(tmp_path / f"w{i}", f"Till W{i}") for i in range(4)]
    for till in tills:
        till.init(relay, "shop")
    sales: dict[str, list[str]] = {t.name: [] for t in tills}
    rng = random.Random(7)
    shifts: dict[str, str | None] = {t.name: None for t in tills}

    def served_by() -> set[int]:
        return {int(m) for m in re.findall(r"\[([0-9]+)\] tillsync\.relay [^\n]* connected",
                                           relay.stderr())}

    for round_no in range(6):
        for till in tills:
            shift, recorded = await _record_sales(till.path, shifts[till.name], 10, rng)
            shifts[till.name] = shift
            sales[till.name] += recorded
        results = finish(sync_procs([(t, relay.url) for t in tills]))
        assert all(code == 0 for code, _, _ in results), (round_no, results)
        if set(pids) <= served_by():
            break
    assert set(pids) <= served_by(), "the kernel gave every connection to one worker"

    os.kill(pids[0], signal.SIGKILL)
    assert relay.wait_log("starting another", timeout=20), relay.stderr()[-2000:]
    for till in tills:
        shift, recorded = await _record_sales(till.path, shifts[till.name], 10, rng)
        sales[till.name] += recorded
    sync_until_done([(t, relay.url) for t in tills], "workers")
    check_store(relay, "shop", tills, sales, "workers:")


# -- the database: down at start, connections cut mid-ingest ----------------------------


def via(url: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = f"{parts.username}@127.0.0.1:{port}" if parts.username else f"127.0.0.1:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def test_a_database_down_at_start_is_retried_then_given_up_clearly(
        tmp_path: Path, pg_db: str) -> None:
    proxy = Proxy(urlsplit(pg_db).port or 5432)
    try:
        url = via(pg_db, proxy.port)
        # Nobody there for good: a clear error, exit 3, after retrying.
        gone = run_cli("relay", "serve", "--data", str(tmp_path / "r0"), "--db", url,
                       "--port", "0", "--db-wait", "1.5", check=False)
        assert gone.returncode == 3, gone.stderr
        assert f"cannot reach PostgreSQL at {url} after 2 s" in gone.stderr, gone.stderr
        assert "retrying in" in gone.stderr and "Traceback" not in gone.stderr

        # Down now, up two seconds later: the relay waits for it and then serves.
        with Relays(tmp_path, url) as relays:
            threading.Timer(2.0, proxy.start).start()
            relay = relays.start()
            log = relay.stderr()
            assert f"cannot reach PostgreSQL at {url}" in log and "retrying in" in log, log
            till = TillDir(tmp_path / "till", "Till 1")
            till.init(relay, "shop")
            assert till.sync_json()["pending"] == 0
    finally:
        proxy.close()


async def test_database_connections_cut_mid_ingest_lose_and_double_nothing(
        tmp_path: Path, pg_db: str) -> None:
    proxy = Proxy(urlsplit(pg_db).port or 5432)
    proxy.start()
    rng = random.Random(11)
    try:
        with Relays(tmp_path, via(pg_db, proxy.port)) as relays:
            relay = relays.start()
            tills = [TillDir(tmp_path / f"c{i}", f"Till C{i}") for i in range(3)]
            for till in tills:
                till.init(relay, "shop")
            sales: dict[str, list[str]] = {t.name: [] for t in tills}
            shifts: dict[str, str | None] = {t.name: None for t in tills}
            cuts = 0
            for _ in range(3):
                for till in tills:
                    shift, recorded = await _record_sales(till.path, shifts[till.name], 150,
                                                          rng)
                    shifts[till.name] = shift
                    sales[till.name] += recorded
                procs = sync_procs([(t, relay.url) for t in tills])
                assert relay.wait_log(" connected", timeout=CLI_TIMEOUT)
                for _cut in range(3):  # a few times while the batches go in
                    await asyncio.sleep(rng.uniform(0.05, 0.3))
                    cuts += proxy.cut()
                results = finish(procs)
                assert {code for code, _, _ in results} <= {0, 4}, results
                assert relay.alive, relay.stderr()[-3000:]
            assert cuts > 0
            sync_until_done([(t, relay.url) for t in tills], "cuts")
            check_store(relay, "shop", tills, sales, "cuts:")
            assert relay.alive
            print(f"{cuts} database connections cut; relay log:\n"
                  + "\n".join(line for line in relay.stderr().splitlines()
                              if "retrying" in line or "failed" in line)[:3000])
    finally:
        proxy.close()

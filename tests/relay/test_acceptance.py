"""The relay in a real process, tills in real processes: the acceptance flows.

* an offline till's sales get the next invoice numbers once it is back, gapless;
* re-sending what the relay already holds changes nothing;
* entries whose shift arrives later wait, then are accepted;
* the relay killed with SIGKILL at random moments during ingest loses and doubles
  nothing (seeded: ``TILLSYNC_KILL_SEED=<n>`` replays a run; the seed is printed).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tests.doubles import sale
from tests.relay.processes import (
    CLI_TIMEOUT,
    ENV,
    Chain,
    RawSession,
    RelayProcess,
    Relays,
    TillDir,
    cli_json,
    enroll_code,
    invoices,
    parallel,
    query,
    refused_url,
    relay_receipts,
    run_cli,
    snapshot,
    store_key,
    stream_position,
)
from tillsync.peer.client import enroll
from tillsync.peer.identity import DeviceKey
from tillsync.peer.store import Till
from tillsync.peer.sync.engine import ReceiptsReceived
from tillsync.peer.sync.receipts import verify_receipts

STORE = "store-1"
PRODUCTS = {
    "bread": {"name": "Bread", "sku": "B1", "price": 320, "reorder_level": "5"},
    "tomato": {"name": "Tomatoes", "sku": "T1", "price": 450, "volatile": True, "unit": "kg"},
    "cheese": {"name": "Cheese", "sku": "C1", "price": 1890, "unit": "kg"},
}
CASHIER = {"name": "Ann", "role": "cashier", "pin": "1234"}


@pytest.fixture
def relays(tmp_path: Path, relay_db: str | None) -> Iterator[Relays]:
    """Relay processes on this test's backend (parametrised: SQLite and PostgreSQL)."""
    with Relays(tmp_path, relay_db) as started:
        yield started


def open_shift(till: TillDir) -> str:
    shift = str(uuid.uuid4())
    entry = till.record("shift_open", {"cashier_id": "ann", "opening_cash": 10000}, shift)
    assert entry["client_id"] == shift
    return shift


def latest(receipts: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """client_id -> its latest receipt (a later one supersedes an earlier one)."""
    out: dict[str, dict[str, Any]] = {}
    for r in sorted(receipts, key=lambda r: r["server_seq"]):
        out[r["client_id"]] = r
    return out


def assert_gapless(rows: list[tuple[Any, ...]], sales: set[str], context: str = "") -> None:
    """Invoice rows (series, no, client_id, ...) number exactly ``sales``, 1..N per series."""
    by_series: dict[str, list[int]] = {}
    for row in rows:
        by_series.setdefault(row[0], []).append(row[1])
    for series, numbers in by_series.items():
        assert numbers == list(range(1, len(numbers) + 1)), \
            f"{context} series {series}: numbers are not 1..N: {numbers}"
    client_ids = [row[2] for row in rows]
    assert len(client_ids) == len(set(client_ids)), f"{context} a sale was numbered twice"
    assert set(client_ids) == sales, (
        f"{context} numbered sales differ from recorded ones: missing "
        f"{sorted(sales - set(client_ids))[:5]}, unexpected {sorted(set(client_ids) - sales)[:5]}")


# -- 1. the seed flow ---------------------------------------------------------------


@pytest.mark.slow
def test_offline_till_gets_the_next_invoice_numbers_when_back(
        tmp_path: Path, relays: Relays) -> None:
    relay = relays.start()
    a, b, c = (TillDir(tmp_path / n, f"Till {n}") for n in "ABC")
    parallel(*(partial(till.init, relay, STORE) for till in (a, b, c)))

    # Master data made on till A reaches every till through the relay.
    a.put("products", "tomato", PRODUCTS["tomato"])
    a.put_many([("products", p, PRODUCTS[p]) for p in ("bread", "cheese")]
               + [("cashiers", "ann", CASHIER)])
    assert a.sync_json()["pending"] == 0
    for report in parallel(b.sync_json, c.sync_json):
        assert report["doc_changes"] > 0 and report["pending"] == 0
    products = json.loads(run_cli("peer", "get", str(b.path), "products").stdout)
    assert set(products) == set(PRODUCTS) and products["tomato"]["volatile"] is True
    assert products["tomato"]["price"] == 450
    assert set(c.master("products")) == set(PRODUCTS) and set(c.master("cashiers")) == {"ann"}

    # A shift per till; A also receives 6 loaves, so selling 2 crosses the reorder level.
    shift_a = open_shift(a)
    a.record("stock_move", {"product_id": "bread", "direction": "in", "qty": 6,
                            "reason": "delivery"})
    assert a.sync_json()["pending"] == 0
    shift_c = open_shift(c)

    # Till B cannot reach the relay: it sells anyway, with provisional tickets.
    shift_b = open_shift(b)
    b1 = b.record("sale", sale(("bread", 1, 320), ("tomato", "0.333", 479),
                               shift_client_id=shift_b))
    b2 = b.record("sale", sale(("cheese", "0.5", 1890), shift_client_id=shift_b))
    assert (b1["ticket"], b2["ticket"]) == ("TILLB-000001", "TILLB-000002")
    unreachable = refused_url()
    failed = b.sync(unreachable, check=False)
    assert failed.returncode == 4, failed.stderr
    assert f"cannot sync with the relay at {unreachable}" in failed.stderr
    assert failed.stdout == ""
    status = b.status()
    assert status["pending"] == 3  # shift_open and both sales
    assert unreachable in status["last_error"]
    assert not {b1["client_id"], b2["client_id"]} & {r["client_id"] for r in b.receipts()}

    # Meanwhile A and C sell and sync: they take numbers 1..5.
    a1 = a.record("sale", sale(("bread", 2, 320), shift_client_id=shift_a))
    a2 = a.record("sale", sale(("tomato", "1.25", 480), shift_client_id=shift_a))
    assert a.sync_json()["accepted"] == 2
    c1 = c.record("sale", sale(("cheese", 1, 1890), shift_client_id=shift_c))
    c2 = c.record("sale", sale(("bread", 1, 320), shift_client_id=shift_c))
    assert c.sync_json()["accepted"] == 3  # its shift_open and two sales
    a3 = a.record("sale", sale(("bread", 1, 320), shift_client_id=shift_a, client_total=999))
    assert a.sync_json()["accepted"] == 1
    numbers = {r[2]: r[1] for r in invoices(relay, STORE)}
    assert [numbers[s["client_id"]] for s in (a1, a2, c1, c2, a3)] == [1, 2, 3, 4, 5]

    mine_a = latest(a.receipts(mine=True))
    assert {"code": "low_stock", "product_id": "bread", "qty": "4", "reorder_level": "5"} \
        in mine_a[a1["client_id"]]["warnings"]
    assert mine_a[a3["client_id"]]["warnings"] == [
        {"code": "total_mismatch", "client_total": 999, "total": 320}]

    # B is back: its two sales get the next numbers, 6 and 7.
    report = b.sync_json()
    assert (report["pushed"], report["accepted"], report["rejected"], report["waiting"],
            report["pending"]) == (3, 3, 0, 0, 0)
    assert b.status()["pending"] == 0
    mine_b = latest(b.receipts(mine=True))
    shift_b_server = mine_b[shift_b]["server_id"]
    assert shift_b_server.startswith("shift-")
    for entry, number, total in ((b1, 6, 320 + 160), (b2, 7, 945)):
        receipt = mine_b[entry["client_id"]]
        assert (receipt["ticket"], receipt["status"], receipt["series"], receipt["invoice_no"],
                receipt["total"], receipt["shift_server_id"]) == (
            entry["ticket"], "accepted", "INV", number, total, shift_b_server), receipt

    # The relay's database: 1..7, no gap, no duplicate, one number per sale.
    rows = invoices(relay, STORE)
    sales = {s["client_id"]: s for s in (a1, a2, c1, c2, a3, b1, b2)}
    assert_gapless(rows, set(sales))
    assert {(r[2], r[4], r[5]) for r in rows if r[2] in (b1["client_id"], b2["client_id"])} == {
        (b1["client_id"], "TILLB-000001", 480), (b2["client_id"], "TILLB-000002", 945)}
    assert all(r[4] == sales[r[2]]["ticket"] for r in rows)

    # Volatile tomatoes keep no stock but remember the latest price: A's 480, sold after
    # B's offline 479 though ingested before it (the latest by sale time, as on the
    # tills, not by arrival). Bread stock moved.
    assert query(relay, "SELECT product_id FROM stock WHERE store = ? AND product_id = ?",
                 (STORE, "tomato")) == []
    assert query(relay, "SELECT price FROM prices WHERE store = ? AND product_id = ?",
                 (STORE, "tomato")) == [(480,)]
    assert query(relay, "SELECT qty FROM stock WHERE store = ? AND product_id = ?",
                 (STORE, "bread")) == [((6 - 2 - 1 - 1 - 1) * 1_000_000,)]

    # Every till sees the whole store's ticket -> invoice mapping once it syncs.
    assert c.sync_json()["pending"] == 0
    seen_by_c = {r.get("ticket"): r.get("invoice_no") for r in c.receipts()}
    assert seen_by_c["TILLB-000001"] == 6 and seen_by_c["TILLB-000002"] == 7
    assert c.status()["receipts_position"] == stream_position(relay, STORE)


@pytest.mark.slow
def test_a_product_made_offline_is_known_when_its_first_sales_are_decided(
        tmp_path: Path, relays: Relays) -> None:
    """A till creates a weighed product, sells it, and only then syncs (one round).  The
    relay must decide the sale with the product in its catalogue: no unknown_product
    warning, no stock kept for a volatile product, its last price remembered."""
    relay = relays.start()
    till = TillDir(tmp_path / "A", "Till A")
    till.init(relay, STORE)
    till.put_many([("products", "tomato", PRODUCTS["tomato"]), ("cashiers", "ann", CASHIER)])
    shift = open_shift(till)
    sold = till.record("sale", sale(("tomato", "0.5", 480), shift_client_id=shift))
    assert till.sync_json()["pending"] == 0
    receipt = latest(till.receipts(mine=True))[sold["client_id"]]
    assert (receipt["status"], receipt["invoice_no"]) == ("accepted", 1)
    assert receipt["warnings"] == [], receipt["warnings"]
    assert query(relay, "SELECT product_id, qty FROM stock WHERE store = ?", (STORE,)) == []
    assert query(relay, "SELECT product_id, price FROM prices WHERE store = ?",
                 (STORE,)) == [("tomato", 480)]


# -- 2. idempotency -----------------------------------------------------------------


def _selling_till(tmp_path: Path, relay: RelayProcess, name: str = "Till A"
                  ) -> tuple[TillDir, str]:
    till = TillDir(tmp_path / name.replace(" ", ""), name)
    till.init(relay, STORE)
    till.put_many([("products", p, body) for p, body in PRODUCTS.items()]
                  + [("cashiers", "ann", CASHIER)])
    return till, open_shift(till)


@pytest.mark.slow
async def test_resending_what_the_relay_holds_changes_nothing(
        tmp_path: Path, relays: Relays) -> None:
    relay = relays.start()
    till, shift = _selling_till(tmp_path, relay)
    body = sale(("bread", 2, 320), shift_client_id=shift)
    first = till.record("sale", body)
    till.record("sale", sale(("cheese", 1, 1890), shift_client_id=shift))
    assert till.sync_json()["accepted"] == 3
    before = snapshot(relay, STORE)
    assert [r[2] for r in before["invoices"]] == [1, 2]  # (store, series, no, ...)
    receipt = [r for r in before["receipts"] if r[1] == first["client_id"]]
    assert len(receipt) == 1

    # A retried record with the same client_id is the same entry; syncing again sends
    # nothing new and the relay decides nothing new.
    again = till.record("sale", body, client_id=first["client_id"])
    assert (again["seq"], again["hash"], again["ticket"]) == (
        first["seq"], first["hash"], first["ticket"])
    report = till.sync_json()
    assert (report["pushed"], report["receipts"], report["pending"]) == (0, 0, 0)
    assert snapshot(relay, STORE) == before

    # The same entries pushed again by hand, over a raw link with the till's own key.
    status = till.status()
    async with await Till.open(till.path, readonly=True) as local:
        entries = await local.entries()
    assert [e.seq for e in entries] == [1, 2, 3]
    position = stream_position(relay, STORE)
    session = await RawSession.open(relay.url, STORE, status["device_id"], till.key,
                                    receipts_after=position)
    try:
        assert session.ready is not None
        assert session.ready.heads == {status["device_id"]: 3}
        assert session.ready.receipts_head == position
        whole = await session.push(entries)
        assert whole.heads == {status["device_id"]: 3} and whole.count == 3
        one = await session.push([entries[1]])  # just the sale, out of its run
        assert one.heads == {status["device_id"]: 3} and one.count == 1
        late = await session.quiet(0.5)
        assert not [e for e in late if isinstance(e, ReceiptsReceived)], late
        assert session.receipts == []
    finally:
        await session.close()
    after = snapshot(relay, STORE)
    assert after == before
    assert [r for r in after["receipts"] if r[1] == first["client_id"]] == receipt
    assert till.sync_json()["pending"] == 0


# -- 3. waiting ---------------------------------------------------------------------


def _waiting_by_name(relay: RelayProcess) -> dict[str, int]:
    """The devices report's entries waiting at the relay, per device name."""
    where = ["--db", relay.db] if relay.db else ["--data", str(relay.data)]
    return {d["name"]: d["waiting"]
            for d in cli_json("report", "devices", *where, "--store", STORE)}


@pytest.mark.slow
async def test_entries_wait_for_a_shift_that_arrives_later(
        tmp_path: Path, relays: Relays) -> None:
    relay = relays.start()
    till, shift = _selling_till(tmp_path, relay)  # its shift_open is not synced yet
    assert till.status()["pending"] == 1

    # A second device (played by hand: a till refuses entries for a shift it did not
    # open) records in till A's shift before the relay has heard of that shift: its
    # entries wait for the shift, then get the shift rules like any other.
    key, device = DeviceKey.generate(), str(uuid.uuid4())
    enrolled = await enroll(relay.url, enroll_code(relay, STORE, "Back office"), "Back office",
                            key, device)
    assert enrolled.store == STORE
    chain = Chain(key, device)
    move = chain.next("cash_movement", {"direction": "in", "amount": 500,
                                        "reason": "extra float", "shift_client_id": shift})
    sold = chain.next("sale", sale(("cheese", "0.5", 1890), shift_client_id=shift))
    close = chain.next("shift_close", {"open_shift_client_id": shift, "closing_cash": 11445})
    waiting = {e.client_id for e in (move, sold, close)}

    session = await RawSession.open(relay.url, STORE, device, key)
    try:
        assert session.ready is not None
        start = session.ready.receipts_head
        ingested = await session.push(chain.entries)
        assert ingested.heads == {device: 3}
        first = await session.receipts_until(start + 3)
        assert {r["client_id"]: (r["status"], r["waiting_for"]) for r in first} == {
            c: ("waiting", [shift]) for c in waiting}
        assert all("invoice_no" not in r and "shift_server_id" not in r for r in first)
        assert invoices(relay, STORE) == []
        assert sorted(query(relay, "SELECT client_id, waiting_for FROM waiting WHERE store = ?",
                            (STORE,))) == sorted((c, shift) for c in waiting)
        assert _waiting_by_name(relay) == {"Back office": 3, "Till A": 0}

        # Till A syncs: its shift gets a server id and the waiting entries follow.
        report = till.sync_json()
        assert report["pending"] == 0
        later = await session.receipts_until(start + 7)
    finally:
        await session.close()
    decided = latest(later)
    shift_server = decided[shift]["server_id"]
    assert decided[shift]["status"] == "accepted" and shift_server.startswith("shift-")
    # Decided again once the shift is known, by the same rules as any entry: the shift
    # is till A's, so the other device's sale and cash movement in it are refused; its
    # close is taken, as a back-office or admin device may close another device's shift.
    for entry in (move, sold):
        receipt = decided[entry.client_id]
        assert (receipt["status"], receipt["error"]["code"]) == ("rejected", "foreign_shift")
        assert "shift_server_id" not in receipt and shift in receipt["error"]["message"]
        assert receipt["server_seq"] > decided[shift]["server_seq"]
    closed = decided[close.client_id]
    assert closed["status"] == "accepted" and "error" not in closed
    assert closed["server_seq"] > decided[shift]["server_seq"]
    assert invoices(relay, STORE) == []
    assert query(relay, "SELECT count(*) FROM waiting WHERE store = ?", (STORE,)) == [(0,)]
    assert _waiting_by_name(relay) == {"Back office": 0, "Till A": 0}

    # Till A holds the store's stream too: the decision superseded the waiting receipt.
    on_till = latest(till.receipts())
    assert {c: on_till[c]["status"] for c in waiting} == {
        move.client_id: "rejected", sold.client_id: "rejected", close.client_id: "accepted"}


# -- 4. kill -9 during ingest --------------------------------------------------------

KILL_STORES = {"kill-1": ["Till K1", "Till K2"], "kill-2": ["Till K3"], "kill-3": ["Till K4"]}
KILL_ROUNDS = 3
SALES_PER_ROUND = 100  # per till: 300 sales each, 1200 in all


async def _record_sales(path: Path, shift: str | None, count: int,
                        rng: random.Random) -> tuple[str, list[str]]:
    """Open the till in this process and record ``count`` sales (one group commit)."""
    async with await Till.open(path) as till:
        if shift is None:
            for product_id, product in PRODUCTS.items():
                await till.put("products", product_id, product)
            await till.put("cashiers", "ann", CASHIER)
            shift = (await till.record("shift_open", {"cashier_id": "ann",
                                                      "opening_cash": 10000})).client_id
        bodies = [sale(("bread", rng.randint(1, 3), 320),
                       ("tomato", f"0.{rng.randint(100, 999)}", rng.choice([450, 479, 480])),
                       shift_client_id=shift) for _ in range(count)]
        entries = await asyncio.gather(*(till.record("sale", b) for b in bodies))
    return shift, [e.client_id for e in entries]


def _start_syncs(tills: list[TillDir], url: str) -> list[subprocess.Popen[str]]:
    return [subprocess.Popen([sys.executable, "-m", "tillsync.tools.cli", "peer", "sync",
                              str(t.path), "--once", "--json", "--relay", url],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=ENV, stdin=subprocess.DEVNULL) for t in tills]


def _finish(procs: list[subprocess.Popen[str]]) -> list[tuple[int, str, str]]:
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


def _restart(relay: RelayProcess) -> str:
    """Start the relay again on its data; the same port if it can be had, else another."""
    try:
        relay.start()
    except AssertionError:
        relay.start(port=0)
    return relay.url


@pytest.mark.slow
async def test_relay_killed_during_ingest_loses_and_doubles_nothing(
        tmp_path: Path, relays: Relays) -> None:
    seed = int(os.environ.get("TILLSYNC_KILL_SEED") or time.time_ns() % 1_000_000)
    print(f"kill -9 seed: {seed} (TILLSYNC_KILL_SEED={seed} replays it)")
    rng = random.Random(seed)
    relay = relays.start()
    tills: list[TillDir] = []
    store_of: dict[str, str] = {}
    for store, names in KILL_STORES.items():
        for name in names:
            till = TillDir(tmp_path / name.replace(" ", ""), name)
            till.init(relay, store)
            tills.append(till)
            store_of[till.name] = store
    shifts: dict[str, str | None] = {t.name: None for t in tills}
    sales: dict[str, list[str]] = {t.name: [] for t in tills}
    url = relay.url
    kills = 0
    codes: list[int] = []
    stored: list[int] = []  # entries the relay held after each kill

    for _ in range(KILL_ROUNDS):
        for till in tills:
            shift, recorded = await _record_sales(till.path, shifts[till.name],
                                                  SALES_PER_ROUND, rng)
            shifts[till.name] = shift
            sales[till.name] += recorded
        # Two pushes interrupted by SIGKILL at a random moment, then the relay comes back.
        for _attempt in range(2):
            procs = _start_syncs(tills, url)
            if rng.random() < 0.2:  # now and then before anyone got through
                time.sleep(rng.uniform(0.0, 0.8))
            else:  # mostly while the batches are being ingested
                assert relay.wait_log(" connected", timeout=CLI_TIMEOUT), relay.stderr()[-2000:]
                time.sleep(rng.uniform(0.0, 0.3))
            relay.kill()
            kills += 1
            results = _finish(procs)
            codes += [code for code, _, _ in results]
            stored.append(query(relay, "SELECT count(*) FROM entries")[0][0])
            assert {code for code, _, _ in results} <= {0, 4}, (seed, results)
            url = _restart(relay)

    # The relay stays up now: sync until nothing is pending.
    for _ in range(5):
        results = _finish(_start_syncs(tills, url))
        assert all(code == 0 for code, _, _ in results), (seed, results)
        if all(json.loads(out)["pending"] == 0 for _, out, _ in results):
            break
    results = _finish(_start_syncs(tills, url))  # everyone takes the whole stream
    assert all(code == 0 and json.loads(out)["pending"] == 0 for code, out, _ in results), \
        (seed, results)
    print(f"{kills} kills; sync exit codes while killing: {codes}; entries held after each "
          f"kill: {stored}")

    for store, names in KILL_STORES.items():
        recorded = {c for n in names for c in sales[n]}
        assert len(recorded) == SALES_PER_ROUND * KILL_ROUNDS * len(names)
        assert_gapless(invoices(relay, store), recorded, f"seed {seed} store {store}:")

        stream = relay_receipts(relay, store)
        positions = [r["server_seq"] for r in stream]
        assert positions == list(range(1, len(stream) + 1)), f"seed {seed}: stream has gaps"
        assert stream_position(relay, store) == len(stream)
        good, _, problem = verify_receipts(store_key(relay.data, store, relay.db), stream, 0,
                                           bytes(32))
        assert (good, problem) == (len(stream), None), f"seed {seed}: stream chain broken"
        accepted: dict[str, int] = {}
        for r in stream:
            if r["status"] == "accepted":
                accepted[r["client_id"]] = accepted.get(r["client_id"], 0) + 1
        assert {c: n for c, n in accepted.items() if n != 1} == {}, \
            f"seed {seed}: entries accepted more than once"
        numbers = {r[2]: r[1] for r in invoices(relay, store)}

        for name in names:
            async with await Till.open(tmp_path / name.replace(" ", ""), readonly=True) as till:
                mine = {r["client_id"]: r for r in await till.receipts("accepted")}
                assert till.receipts_position()[0] == len(stream)
                assert (await till.pending(limit=0))[0] == 0
            missing = [c for c in sales[name] if c not in mine]
            assert missing == [], f"seed {seed}: {len(missing)} sales of {name} not accepted"
            assert all(mine[c]["invoice_no"] == numbers[c] for c in sales[name]), \
                f"seed {seed}: a till holds another invoice number than the relay"

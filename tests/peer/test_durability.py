"""Durability with real processes: kill -9 mid-burst, tampered files, a second writer,
a damaged database, and a master document with thousands of products.

The crash tests kill a writer (tests/peer/burst_writer.py) at a random point.  Each round
draws its kill point from its own seed, ``TILLSYNC_DURABILITY_SEED`` + round; the base
seed is random unless that variable is set, and every assertion message names it, so
``TILLSYNC_DURABILITY_SEED=<seed> pytest tests/peer/test_durability.py`` replays the
same choices (the exact instant of the kill still depends on the scheduler).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest

from tests.doubles import REPO, cli, sale, stocked_till
from tillsync.peer.errors import StoreCorrupt
from tillsync.peer.store import DB_FILE, LOCK_FILE, Till

BASE_SEED = int(os.environ.get("TILLSYNC_DURABILITY_SEED")
                or random.SystemRandom().randrange(1 << 32))
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
WRITER = [sys.executable, "-m", "tests.peer.burst_writer"]


def replay(seed: int) -> str:
    return f"seed {seed} (replay: TILLSYNC_DURABILITY_SEED={BASE_SEED})"


# -- a writer process, killed with SIGKILL -----------------------------------------------


def run_until_killed(
    args: list[object], seed: int, stop: Callable[[str], bool], log: Path
) -> list[str]:
    """Start the writer with ``args`` (see burst_writer.py), feed ``stop`` each line it
    prints, and SIGKILL it when ``stop`` says so.

    Returns every complete line the writer printed, including those still in the pipe when
    it died: each one was printed after its call had returned.
    """
    with open(log, "w") as stderr:
        proc = subprocess.Popen([*WRITER, *map(str, args)], cwd=REPO, env=ENV,
                                stdout=subprocess.PIPE, stderr=stderr, text=True)
    hung = threading.Event()

    def watchdog() -> None:
        hung.set()
        proc.kill()

    timer = threading.Timer(60, watchdog)
    timer.start()
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if stop(lines[-1]):
                os.kill(proc.pid, signal.SIGKILL)
                break
        # A last fragment without its newline was cut by the kill: not a whole line.
        lines.extend(proc.stdout.read().split("\n")[:-1])
        code = proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert not hung.is_set(), f"{replay(seed)}: the writer hung; stderr:\n{log.read_text()}"
    assert code == -signal.SIGKILL, (
        f"{replay(seed)}: the writer ended by itself (exit {code}) before the kill; "
        f"stderr:\n{log.read_text()}"
    )
    return lines


def count_lines(limit: int) -> Callable[[str], bool]:
    seen = 0

    def stop(_line: str) -> bool:
        nonlocal seen
        seen += 1
        return seen >= limit

    return stop


def at_compaction(nth: int) -> Callable[[str], bool]:
    """Stop inside the ``nth`` compaction's transaction."""
    inside = 0

    def stop(line: str) -> bool:
        nonlocal inside
        inside += line == "compact inside"
        return inside >= nth

    return stop


# -- 1. kill -9 in the middle of write bursts --------------------------------------------


@pytest.mark.slow
async def test_kill_9_during_write_bursts_loses_no_acknowledged_write(tmp_path: Path) -> None:
    store = tmp_path / "till"
    till = await stocked_till(store)
    series, device = till.series, till.device_id
    await till.close()

    acknowledged: dict[str, tuple[str, int, str]] = {}  # client_id -> (kind, seq, ticket)
    prices: dict[str, int] = {}  # product id -> highest price acknowledged
    for round_no in range(6):
        seed = BASE_SEED + round_no
        kill_after = random.Random(seed).randint(5, 300)
        lines = run_until_killed(["log", store, seed, (round_no + 1) * 1_000_000], seed,
                                 count_lines(kill_after), tmp_path / f"writer{round_no}.err")
        where = f"round {round_no}, killed after {kill_after} lines, {replay(seed)}"
        assert len(lines) >= kill_after, where
        for line in lines:
            match line.split():
                case ["entry", kind, client_id, seq, ticket]:
                    assert client_id not in acknowledged, f"{where}: {client_id} returned twice"
                    acknowledged[client_id] = (kind, int(seq), ticket)
                case ["put", "products", record_id, price]:
                    prices[record_id] = max(prices.get(record_id, 0), int(price))
                case _:
                    pytest.fail(f"{where}: the writer printed {line!r}")

        # Not read-only: the kernel released the dead writer's lock.
        async with await Till.open(store) as till:
            report = await till.verify()
            assert report.ok, f"{where}: {report.to_json()}"
            for client_id, (kind, seq, ticket) in acknowledged.items():
                entry = await till.entry(client_id)
                assert entry is not None, (
                    f"{where}: {kind} {client_id} seq {seq} was acknowledged, then lost")
                assert (entry.kind, entry.seq, entry.ticket or "-") == (kind, seq, ticket), where
            mine = [e for e in await till.entries() if e.device_id == device]
            assert [e.seq for e in mine] == list(range(1, len(mine) + 1)), f"{where}: seq gap"
            tickets = [e.ticket for e in mine if e.kind == "sale"]
            assert tickets == [f"{series}-{n:06d}" for n in range(1, len(tickets) + 1)], (
                f"{where}: tickets are not consecutive from 1: {tickets}")
            assert all(e.ticket is None for e in mine if e.kind != "sale"), where
            for record_id, price in prices.items():
                record = till.get("products", record_id)
                assert record is not None, f"{where}: put of {record_id} returned, then lost"
                assert record["price"] >= price, f"{where}: {record_id} went back to {record}"

            # The numbering goes on from what survived: next seq, next ticket.
            after = await till.record("sale", sale(("bread", 1, 320)))
            assert after.seq == len(mine) + 1, where
            assert after.ticket == f"{series}-{len(tickets) + 1:06d}", where
            acknowledged[after.client_id] = ("sale", after.seq, after.ticket)
    assert len(acknowledged) > 6 * 5


async def test_gathered_writes_share_one_transaction(tmp_path: Path) -> None:
    """What the bursts above rely on: concurrent calls are committed together."""
    till = await stocked_till(tmp_path / "till")
    db = till._db
    commit = db.commit
    commits = 0

    async def counted() -> None:
        nonlocal commits
        commits += 1
        await commit()

    db.commit = counted  # type: ignore[method-assign]
    try:
        entries = await asyncio.gather(
            *(till.record("sale", sale(("bread", 1, 320))) for _ in range(30)))
    finally:
        await till.close()
    assert sorted(e.seq for e in entries) == list(range(2, 32))
    assert sorted(e.ticket or "" for e in entries) == [f"TILL1-{n:06d}" for n in range(1, 31)]
    assert commits < 30 // 2, f"30 concurrent sales took {commits} commits"


# -- 2. tampering with the file ---------------------------------------------------------


def flip_byte_in_file(db: Path, needle: bytes, offset: int) -> None:
    """Change one byte of ``needle`` (which must occur once in the file) in place."""
    con = sqlite3.connect(db)
    try:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()
    wal = Path(f"{db}-wal")
    assert not wal.exists() or wal.stat().st_size == 0, "the WAL still holds pages"
    data = db.read_bytes()
    assert data.count(needle) == 1, f"the bytes to alter occur {data.count(needle)} times"
    at = data.index(needle) + offset
    with open(db, "r+b") as handle:
        handle.seek(at)
        handle.write(bytes([data[at] ^ 0x01]))
    assert db.read_bytes() != data


def read_row(db: Path, sql: str, *args: object) -> tuple[bytes, ...]:
    con = sqlite3.connect(db)
    try:
        row = con.execute(sql, args).fetchone()
    finally:
        con.close()
    assert row is not None
    return tuple(bytes(x) for x in row)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["body-text", "body-price", "sig"])
async def test_verify_names_the_altered_entry(tmp_path: Path, target: str) -> None:
    store = tmp_path / "till"
    db = store / DB_FILE
    till = await stocked_till(store)
    for _ in range(4):
        await till.record("sale", sale(("bread", 1, 320)))
    victim = await till.record("sale", sale(("cheese", "0.5", 1890), note="audit-target"))
    for _ in range(4):
        await till.record("sale", sale(("bread", 2, 320)))
    device = till.device_id
    await till.close()
    assert cli("peer", "verify", str(store), "--json").returncode == 0

    body, sig = read_row(db, "SELECT body, sig FROM entries WHERE client_id = ?",
                         victim.client_id)
    assert body == victim.body_bytes and sig == victim.sig
    if target == "body-text":
        flip_byte_in_file(db, body, body.index(b"audit-target") + 3)
        reason = "altered"
    elif target == "body-price":
        price = msgpack.packb("unit_price") + msgpack.packb(1890)
        flip_byte_in_file(db, body, body.index(price) + len(price) - 1)
        (altered,) = read_row(db, "SELECT body FROM entries WHERE client_id = ?",
                              victim.client_id)
        assert msgpack.unpackb(altered)["lines"][0]["unit_price"] == 1891  # a plausible edit
        reason = "altered"
    else:
        flip_byte_in_file(db, sig, 17)
        reason = "signature"

    result = cli("peer", "verify", str(store), "--json", check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert report["first_break"] is not None, report
    assert {k: report["first_break"][k] for k in ("device_id", "seq", "client_id")} == {
        "device_id": device, "seq": victim.seq, "client_id": victim.client_id}, report
    assert reason in report["first_break"]["reason"], report

    human = cli("peer", "verify", str(store), check=False)
    assert human.returncode == 1
    assert "first broken link" in human.stdout and victim.client_id in human.stdout


@pytest.mark.slow
@pytest.mark.parametrize("table", ["doc_changes", "doc_snapshot"])
async def test_altered_master_document_fails_loudly(tmp_path: Path, table: str) -> None:
    store = tmp_path / "till"
    db = store / DB_FILE
    till = await stocked_till(store)
    await till.put("products", "saffron", {"name": "Saffron", "sku": "SF1", "price": 9900})
    original = till.get("products", "saffron")
    await till.close()

    (data,) = read_row(db, f"SELECT data FROM {table} ORDER BY id DESC LIMIT 1")
    flip_byte_in_file(db, data, len(data) // 2)

    with pytest.raises(StoreCorrupt, match="master document is damaged"):
        await Till.open(store, readonly=True)
    verify = cli("peer", "verify", str(store), "--json", check=False)
    assert verify.returncode == 1, verify.stdout + verify.stderr
    assert "Traceback" not in verify.stderr
    report = json.loads(verify.stdout)
    assert report["ok"] is False
    assert any("master document is damaged" in p and str(store) in p for p in report["problems"])
    get = cli("peer", "get", str(store), "products", "saffron", check=False)
    assert get.returncode == 3 or json.loads(get.stdout) == original, (
        f"a damaged document was read without complaint: {get.stdout}")
    assert "Traceback" not in get.stderr


# -- 3. a second writer ------------------------------------------------------------------


def file_contents(store: Path) -> dict[str, bytes]:
    """The database and its WAL (not the shared-memory index, which readers touch)."""
    return {p.name: p.read_bytes() for p in sorted(store.iterdir())
            if p.name in (DB_FILE, f"{DB_FILE}-wal", LOCK_FILE)}


def start_holder(store: Path) -> subprocess.Popen[str]:
    """A process that opens ``store`` for writing, prints "ready" and sleeps."""
    return subprocess.Popen([*WRITER, "hold", str(store)], cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


@pytest.mark.slow
async def test_second_writer_is_refused_and_readers_still_work(tmp_path: Path) -> None:
    store = tmp_path / "till"
    till = await stocked_till(store)
    await till.record("sale", sale(("bread", 1, 320)))
    await till.close()

    holder = start_holder(store)
    timer = threading.Timer(60, holder.kill)
    timer.start()
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "ready\n"
        before = file_contents(store)
        assert before[LOCK_FILE] == f"process {holder.pid}\n".encode()

        body = json.dumps(sale(("bread", 1, 320)))
        for args in (["record", str(store), "sale", "--body", body],
                     ["put", str(store), "products", "x", "--body",
                      '{"name": "X", "sku": "X1", "price": 1}']):
            result = cli("peer", *args, check=False)
            assert result.returncode == 3, result.stdout + result.stderr
            assert str(store) in result.stderr
            assert re.search(r"in use|being written|locked", result.stderr), result.stderr
            assert f"process {holder.pid}" in result.stderr, result.stderr
            assert "Traceback" not in result.stderr
            assert result.stdout == ""

        status = cli("peer", "status", str(store), "--json")
        assert json.loads(status.stdout)["last_seq"] == 2
        assert cli("peer", "verify", str(store)).returncode == 0
        assert file_contents(store) == before  # nothing stored changed, the lock still names
        assert holder.poll() is None  # the holder
    finally:
        timer.cancel()
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()

    # Once the holder is gone, the same command goes through.
    recorded = cli("peer", "record", str(store), "sale", "--body", body, "--json")
    assert json.loads(recorded.stdout)["seq"] == 3


# -- 4. a damaged database file ----------------------------------------------------------


def side_files(db: Path) -> dict[str, int]:
    """Sizes of the database's WAL and rollback journal, if there are any."""
    return {p.name: p.stat().st_size for p in (Path(f"{db}-wal"), Path(f"{db}-journal"))
            if p.exists()}


def overwrite_start(db: Path, garbage: bytes) -> bytes:
    """Overwrite the first bytes of ``db`` in place; return the whole damaged file."""
    with open(db, "r+b") as handle:
        handle.write(garbage)
    return db.read_bytes()


@pytest.mark.slow
async def test_garbage_database_header_is_reported_and_left_alone(tmp_path: Path) -> None:
    store = tmp_path / "till"
    db = store / DB_FILE
    till = await stocked_till(store)
    await till.close()
    assert side_files(db) == {}
    damaged = overwrite_start(db, random.Random(BASE_SEED).randbytes(100))

    body = json.dumps(sale(("bread", 1, 320)))
    for args in (["status", str(store)], ["status", str(store), "--json"],
                 ["record", str(store), "sale", "--body", body],
                 ["put", str(store), "products", "x", "--body",
                  '{"name": "X", "sku": "X1", "price": 1}'],
                 ["verify", str(store)]):
        result = cli("peer", *args, check=False)
        what = f"tillsync peer {' '.join(args[:1])} ({replay(BASE_SEED)})"
        # verify reports damage as a failed check (1) on stdout; the others cannot run (3)
        expected, stream = (1, result.stdout) if args[0] == "verify" else (3, result.stderr)
        assert result.returncode == expected, f"{what}: {result.stdout}{result.stderr}"
        assert str(db) in stream, f"{what}: {result.stdout}{result.stderr}"
        assert "Traceback" not in result.stderr, f"{what}: {result.stderr}"
        assert db.read_bytes() == damaged, f"{what} rewrote the damaged file"
        assert not any(side_files(db).values()), f"{what} wrote {side_files(db)}"


# -- 5. a big master document --------------------------------------------------------------


def document_rows(db: Path) -> tuple[int, int]:
    """Number of change chunks and the size of the snapshot, read from the file."""
    con = sqlite3.connect(db)
    try:
        row = con.execute("SELECT (SELECT count(*) FROM doc_changes), "
                          "(SELECT length(data) FROM doc_snapshot)").fetchone()
    finally:
        con.close()
    return int(row[0]), int(row[1])


def product(i: int) -> dict[str, object]:
    return {"name": f"Product {i}", "sku": f"SKU{i:05d}", "price": 100 + i,
            "barcode": f"{4000000000000 + i}", "category": f"aisle {i % 17}"}


async def test_thousands_of_products_survive_reopen_identical(tmp_path: Path) -> None:
    store = tmp_path / "till"
    await Till.init(store, name="Till 1")
    _, genesis_snapshot = document_rows(store / DB_FILE)
    async with await Till.open(store) as till:
        for start in range(0, 3000, 200):
            await asyncio.gather(*(till.put("products", f"p{i:05d}", product(i))
                                   for i in range(start, start + 200)))
        await asyncio.gather(*(till.put("products", f"p{i:05d}", {"price": 7, "unit": "kg"})
                               for i in range(0, 3000, 10)))
        everything, heads = till.master.to_py(), sorted(till.master.heads())
    assert len(everything["products"]) == 3000
    assert everything["products"]["p00010"]["price"] == 7

    chunks, snapshot = document_rows(store / DB_FILE)
    assert snapshot > genesis_snapshot, "the document was never compacted"
    assert chunks < 3300, f"{chunks} change chunks: compaction did not drop the old ones"

    for readonly in (False, True, False):
        async with await Till.open(store, readonly=readonly) as till:
            assert sorted(till.master.heads()) == heads
            assert till.master.to_py() == everything
            assert till.get("products", "p01234") == {**product(1234), "volatile": False,
                                                      "active": True}


@pytest.mark.slow
async def test_kill_9_during_put_bursts_and_compaction_loses_no_put(tmp_path: Path) -> None:
    """Even rounds kill the writer inside a compaction transaction (new snapshot written,
    old chunks deleted, not committed); odd rounds kill it after a random number of puts,
    a few compactions in."""
    store = tmp_path / "till"
    await Till.init(store, name="Till 1")
    prices: dict[str, int] = {}
    compactions = 0
    for round_no in range(4):
        seed = BASE_SEED + 100 + round_no
        rng = random.Random(seed)
        if round_no % 2 == 0:
            nth = rng.randint(1, 2)
            stop, plan, pause = at_compaction(nth), f"killed inside compaction {nth}", 0.5
        else:
            limit = rng.randint(400, 1500)
            stop, plan, pause = count_lines(limit), f"killed after {limit} lines", 0.0
        lines = run_until_killed(["puts", store, seed, (round_no + 1) * 1_000_000, pause],
                                 seed, stop, tmp_path / f"writer{round_no}.err")
        where = f"round {round_no}, {plan}, {replay(seed)}"
        marks = []
        for line in lines:
            match line.split():
                case ["put", "products", record_id, price]:
                    prices[record_id] = max(prices.get(record_id, 0), int(price))
                case ["compact", mark]:
                    marks.append(mark)
                case _:
                    pytest.fail(f"{where}: the writer printed {line!r}")
        compactions += marks.count("done")
        if round_no % 2 == 0:
            assert marks[-2:] == ["start", "inside"], f"{where}: not killed mid-compaction"

        async with await Till.open(store) as till:
            report = await till.verify()
            assert report.ok, f"{where}: {report.to_json()}"
            products = till.all("products")
            lost = sorted(r for r in prices if r not in products)
            assert not lost, f"{where}: {len(lost)} acknowledged puts lost, e.g. {lost[:5]}"
            older = sorted(r for r, p in prices.items() if products[r]["price"] < p)
            assert not older, f"{where}: these went back to an older price: {older[:5]}"
            # The document as loaded is whole: one more put on top saves and reloads.
            await till.put("products", f"after-{round_no}", product(round_no))
        async with await Till.open(store, readonly=True) as till:
            assert till.get("products", f"after-{round_no}") is not None, where
    assert compactions >= 1, f"no compaction committed in the odd rounds ({replay(BASE_SEED)})"

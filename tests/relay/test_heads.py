"""The heads the relay reads (each device's last entry: every ingest transaction reads
those of the devices in it, every connection reads all of its store's), on both
backends: right, and found with one index probe per device, however long the history.

Both used to walk every entry of the store (about 0.8 s a commit at a million entries
on SQLite), so ingest slowed down as a shop's history grew.  The work is counted, not
timed: SQLite's virtual machine steps, PostgreSQL's rows read from ``entries``.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.relay.processes import now
from tillsync.peer.log import Entry
from tillsync.relay.storage import open_storage
from tillsync.relay.storage import postgres as pg
from tillsync.relay.storage import sqlite as lite
from tillsync.relay.storage.base import ALL_HEADS

DEVICES = {"a": {"d1": 1, "d2": 5, "d3": 20}, "b": {"d1": 7, "d4": 2}}


def entries(device: str, count: int, store: str) -> list[Entry]:
    out, prev = [], bytes(32)
    for seq in range(1, count + 1):
        entry = Entry(f"{store}-{device}-{seq}-{uuid.uuid4()}", device, seq, prev, "note",
                      now(), None, b"\x80", bytes(64))
        out.append(entry)
        prev = entry.hash
    return out


async def test_heads_are_each_devices_last_entry(relay_db: str | None, tmp_path: Path) -> None:
    storage = await open_storage(relay_db, tmp_path / "relay.sqlite")
    try:
        made = {store: {d: entries(d, n, store) for d, n in devices.items()}
                for store, devices in DEVICES.items()}
        async with storage.transaction() as txn:
            assert await txn.heads("a", ["d1", "d2"]) == {}
            for store, chains in made.items():
                for chain in chains.values():
                    await txn.insert_entries(store, chain, now())
        async with storage.transaction() as txn:
            for store, chains in made.items():
                want = {d: (c[-1].seq, c[-1].hash) for d, c in chains.items()}
                assert await txn.heads(store, [*chains, "nobody"]) == want
                assert await txn.heads(store, ["d3"]) == {k: v for k, v in want.items()
                                                        if k == "d3"}
            assert await txn.heads("empty", ["d1"]) == {}
        for store, devices in DEVICES.items():
            assert await storage.heads(store) == devices
        assert await storage.heads("empty") == {}
    finally:
        await storage.close()


def _sqlite_steps(db: sqlite3.Connection, sql: str, args: tuple[object, ...]) -> int:
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    db.set_progress_handler(count, 1)
    try:
        db.execute(sql, args).fetchall()
    finally:
        db.set_progress_handler(None, 1)
    return steps


def test_sqlite_heads_work_does_not_grow_with_history() -> None:
    db = sqlite3.connect(":memory:", isolation_level=None)
    db.executescript(lite._SCHEMA)
    devices = [f"dev{i}" for i in range(5)]
    queries = [(lite.heads_of(len(devices)), ("s", *devices)), (ALL_HEADS, ("s",) * 3)]
    steps: list[list[int]] = []
    done = 0
    for history in (200, 3200):  # entries per device
        db.executemany(
            "INSERT INTO entries VALUES ('s', ?, ?, ?, x'00', 'sale', 't', NULL, x'00', "
            "x'00', x'01', 't')",
            ((d, seq, f"{d}-{seq}") for seq in range(done + 1, history + 1) for d in devices))
        done = history
        steps.append([_sqlite_steps(db, sql, args) for sql, args in queries])
        rows = db.execute(ALL_HEADS, ("s",) * 3).fetchall()
        assert sorted(rows) == [(d, history) for d in devices]
    for (small, large), (sql, _) in zip(zip(*steps, strict=True), queries, strict=True):
        # 16 times the history: a B-tree one level deeper at most, not 16 times the work
        assert large <= small * 1.5, (small, large, sql)


def _rows_read(plan: dict[str, Any], table: str) -> float:
    own = plan.get("Actual Rows", 0) * plan.get("Actual Loops", 1) \
        if plan.get("Relation Name") == table else 0
    return own + sum(_rows_read(p, table) for p in plan.get("Plans", []))


@pytest.mark.postgres
async def test_postgres_heads_read_one_row_per_device(pg_db: str, tmp_path: Path) -> None:
    storage = await open_storage(pg_db, tmp_path / "unused.sqlite")
    await storage.close()  # the schema is made
    devices = [f"dev{i}" for i in range(5)]
    conn = await asyncpg.connect(pg_db)
    try:
        await conn.execute(
            "INSERT INTO entries SELECT 's', 'dev' || d, seq, d || '-' || seq, '\\x00', "
            "'sale', 't', NULL, '\\x00', '\\x00', '\\x01', 't' "
            "FROM generate_series(0, 4) d, generate_series(1, 5000) seq")
        await conn.execute("ANALYZE entries")
        for sql, args in [(pg._HEADS_OF, ("s", devices)), (pg._ALL_HEADS, ("s",) * 3)]:
            rows = await conn.fetch(sql, *args)
            assert sorted((r[0], r[1]) for r in rows) == [(d, 5000) for d in devices]
            out = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", *args)
            plan = json.loads(out)[0]["Plan"]
            # 25,000 entries; the devices' last ones, and a few probes, are read
            assert _rows_read(plan, "entries") <= 3 * len(devices) + 2, (sql, plan)
    finally:
        await conn.close()

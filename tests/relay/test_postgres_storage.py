"""The PostgreSQL backend itself, in this process, on a fresh database: several storages
(each its own pool, as several relay processes have) deciding one store at once,
deadlocks retried, the schema's version."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import asyncpg
import pytest

from tests.doubles import sale
from tests.relay.processes import Chain, now, run_cli
from tillsync.peer.errors import StoreError
from tillsync.peer.identity import DeviceKey
from tillsync.relay.ingest import ingest
from tillsync.relay.storage import with_retries
from tillsync.relay.storage.postgres import (
    MIGRATIONS,
    SCHEMA_VERSION,
    PostgresStorage,
    describe,
    migrate_schema,
)

pytestmark = pytest.mark.postgres
STORE = "shop"
RELAY_KEY = DeviceKey.generate()


async def enrolled(storage: PostgresStorage, store: str) -> Chain:
    key, device = DeviceKey.generate(), str(uuid.uuid4())
    code = uuid.uuid4().bytes
    await storage.add_code(store, code, "Till", "till", "9999-01-01T00:00:00Z")
    row = await storage.enroll(code, device, "Till", key.public_bytes, now())
    assert not isinstance(row, str), row
    return Chain(key, device)


async def push(storage: PostgresStorage, store: str, chain: Chain, entries: list[object]
               ) -> None:
    async def attempt() -> None:
        async with storage.transaction() as txn:
            await ingest(txn, store, entries,  # type: ignore[arg-type]
                         public_keys={chain.device_id: chain.key.public_bytes},
                         catalogue=lambda _p: None, key=RELAY_KEY, now=now())
    await with_retries(storage, "test ingest", attempt)


async def test_processes_deciding_one_store_at_once_number_it_gaplessly(pg_db: str) -> None:
    storages = [await PostgresStorage.open(pg_db, pool_size=4) for _ in range(3)]
    try:
        chains = [await enrolled(storages[0], STORE) for _ in range(6)]
        sales: set[str] = set()
        for chain in chains:
            shift = chain.next("shift_open", {"cashier_id": "ann", "opening_cash": 0})
            for _ in range(40):
                sales.add(chain.next("sale", sale(("bread", 1, 320),
                                                  shift_client_id=shift.client_id)).client_id)

        async def device(i: int, chain: Chain) -> None:
            storage = storages[i % len(storages)]
            for start in range(0, len(chain.entries), 5):  # many small transactions
                await push(storage, STORE, chain, chain.entries[start:start + 5])

        await asyncio.gather(*(device(i, c) for i, c in enumerate(chains)))
        conn = await asyncpg.connect(pg_db)
        try:
            rows = await conn.fetch("SELECT invoice_no, client_id FROM invoices WHERE store = $1 "
                                    "ORDER BY invoice_no", STORE)
            stream = await conn.fetch("SELECT server_seq FROM receipts WHERE store = $1 "
                                      "ORDER BY server_seq", STORE)
        finally:
            await conn.close()
        assert [r[0] for r in rows] == list(range(1, len(sales) + 1))
        assert {r[1] for r in rows} == sales
        assert [r[0] for r in stream] == list(range(1, len(stream) + 1))
        assert len(stream) == len(sales) + len(chains)  # every sale and shift, once
    finally:
        for storage in storages:
            await storage.close()


async def test_a_deadlock_is_retried_and_both_transactions_commit(pg_db: str) -> None:
    one = await PostgresStorage.open(pg_db, pool_size=2)
    two = await PostgresStorage.open(pg_db, pool_size=2)
    try:
        tries = {"a": 0, "b": 0}
        both_hold_one = asyncio.Barrier(2)

        async def locking(name: str, storage: PostgresStorage, first: str, second: str) -> None:
            async def attempt() -> None:
                tries[name] += 1
                async with storage.transaction() as txn:
                    await txn.lock([first])
                    if tries[name] == 1:
                        await both_hold_one.wait()
                    await txn.lock([second])  # the wrong order, on purpose
                    await txn.set_counters(first, {f"by-{name}": tries[name]})
            await with_retries(storage, "deadlocking", attempt)

        await asyncio.wait_for(asyncio.gather(locking("a", one, "s1", "s2"),
                                              locking("b", two, "s2", "s1")), 30)
        assert sorted(tries.values()) == [1, 2]  # PostgreSQL broke the cycle once
    finally:
        await one.close()
        await two.close()


async def test_the_schema_is_versioned_migrated_once_and_never_downgraded(pg_db: str) -> None:
    conn = await asyncpg.connect(pg_db)
    try:
        results = await asyncio.gather(*(PostgresStorage.open(pg_db) for _ in range(3)))
        for storage in results:  # three relays starting at once: one migrates
            await storage.close()
        assert await migrate_schema(conn) == SCHEMA_VERSION
        rows = await conn.fetch("SELECT version FROM schema_version ORDER BY version")
        assert [r[0] for r in rows] == [v for v, _, _ in MIGRATIONS]  # each one once
        await conn.execute("INSERT INTO schema_version (version, description) "
                           "VALUES ($1, 'from the future')", SCHEMA_VERSION + 1)
        with pytest.raises(StoreError, match="newer than this relay knows"):
            await PostgresStorage.open(pg_db)
    finally:
        await conn.close()


def test_relay_migrate_on_the_command_line(pg_db: str, tmp_path: Path) -> None:
    first = run_cli("relay", "migrate", "--db", pg_db, "--json")
    assert json.loads(first.stdout) == {"schema_version": SCHEMA_VERSION,
                                        "database": describe(pg_db)}
    again = run_cli("relay", "migrate", "--db", pg_db, "--json")  # nothing left to do
    assert json.loads(again.stdout)["schema_version"] == SCHEMA_VERSION
    assert "migrated to version" in first.stderr and "migrated" not in again.stderr
    sqlite = run_cli("relay", "migrate", "--data", str(tmp_path / "relay"), "--json")
    assert json.loads(sqlite.stdout)["schema_version"] >= 1
    refused = run_cli("relay", "serve", "--data", str(tmp_path / "relay"), "--workers", "2",
                      check=False)
    assert refused.returncode == 2 and "--workers needs --db" in refused.stderr
    wrong = run_cli("relay", "serve", "--data", str(tmp_path / "relay"), "--db", "relay.db",
                    check=False)
    assert wrong.returncode == 2 and "--db takes a postgresql://" in wrong.stderr

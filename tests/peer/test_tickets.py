"""The ticket history read page by page from the till's ticket indexes: newest first by
client time, a time range, a limit, one sale by its ticket, and a store of the schema
before the indexes, upgraded."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tillsync.peer.store import DB_FILE, Till
from tillsync.tools.bench_store import sale_bodies, sales_store

START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


async def _shop(path: Path, sales: int) -> list[str]:
    """A store with ``sales`` sales a minute apart, and a shift between them; their
    tickets, oldest first."""
    till = await sales_store(path)
    await till.close()
    moments = iter(START + timedelta(minutes=i) for i in range(10 * sales))
    tickets = []
    async with await Till.open(path, clock=lambda: next(moments)) as till:
        for i, body in enumerate(sale_bodies(sales, seed=3)):
            tickets.append((await till.record("sale", body)).ticket)
            if i == 2:  # an entry without a ticket in between
                await till.record("cash_movement", {"shift_client_id": body["shift_client_id"],
                                                "direction": "in", "amount": 100,
                                                "reason": "float"})
    return [t for t in tickets if t is not None]


async def test_a_page_of_the_history_is_newest_first_within_the_range(tmp_path: Path
                                                                      ) -> None:
    tickets = await _shop(tmp_path, 8)
    async with await Till.open(tmp_path, readonly=True) as till:
        everything = await till.tickets(limit=100)
        assert [e.ticket for e, _ in everything] == tickets[::-1]
        assert all(e.kind == "sale" and receipt is None for e, receipt in everything)
        assert [e.ticket for e, _ in await till.tickets(limit=3)] == tickets[:-4:-1]
        first, last = everything[-1][0].client_created_at, everything[2][0].client_created_at
        page = await till.tickets(first, last, 4)
        assert [e.ticket for e, _ in page] == tickets[:-3][::-1][:4]  # the end is exclusive
        assert all(first <= e.client_created_at < last for e, _ in page)
        (one, _), = await till.tickets(ticket=tickets[4])
        assert one.ticket == tickets[4] and one.client_id == everything[3][0].client_id
        assert await till.tickets(ticket="NOPE-000001") == []


async def test_a_store_from_before_the_ticket_indexes_gets_them_when_opened(
        tmp_path: Path) -> None:
    tickets = await _shop(tmp_path, 3)
    with sqlite3.connect(tmp_path / DB_FILE) as conn:
        conn.execute("DROP INDEX entries_by_time")
        conn.execute("DROP INDEX entries_by_ticket")
        conn.execute("UPDATE meta SET value = '5' WHERE key = 'schema_version'")
    async with await Till.open(tmp_path) as till:
        assert [e.ticket for e, _ in await till.tickets(limit=10)] == tickets[::-1]
    with sqlite3.connect(tmp_path / DB_FILE) as conn:
        names = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = "
                                            "'index' AND name LIKE 'entries_by_%'")}
        plan = conn.execute("EXPLAIN QUERY PLAN SELECT client_id FROM entries WHERE ticket "
                            "IS NOT NULL ORDER BY client_created_at DESC LIMIT 5").fetchall()
    assert names == {"entries_by_time", "entries_by_ticket"}
    assert "entries_by_time" in str(plan)

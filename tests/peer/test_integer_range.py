"""The till and tillsync's one integer range (``schemas.limits``): what leaves it is
refused by ``Till.record`` with a clear message, and what is inside it is recorded and
counted in the till's views."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.doubles import SHIFT, sale, stocked_till
from tillsync.peer.errors import InvalidInput
from tillsync.peer.store import DB_FILE, Till
from tillsync.schemas import SchemaViolation
from tillsync.schemas.limits import INTEGER_MAX


async def test_money_beyond_the_range_is_refused_at_the_till(tmp_path: Path) -> None:
    async with await stocked_till(tmp_path) as till:
        with pytest.raises(SchemaViolation, match="opening_cash.*too large"):
            await till.record("shift_open", {"cashier_id": "ann", "opening_cash": 2**64 - 1})
        with pytest.raises(SchemaViolation, match=r"lines\[0\].qty"):
            await till.record("sale", sale(("bread", 10**9, 1), cash=0))


@pytest.mark.parametrize(("lines", "where"), [
    ((("bread", 999_999_999, INTEGER_MAX),), r"lines\[0\]: the line amount"),
    ((("bread", 1, INTEGER_MAX), ("cheese", 1, 1)), r"lines' total up to line 1"),
])
async def test_a_sale_whose_figures_leave_the_range_is_refused_at_the_till(
        tmp_path: Path, lines: tuple[tuple[str, int, int], ...], where: str) -> None:
    async with await stocked_till(tmp_path) as till:
        before = await till.status()
        with pytest.raises(InvalidInput, match=where) as refused:
            await till.record("sale", sale(*lines, cash=0))
        assert "\n" not in str(refused.value) and str(INTEGER_MAX) in str(refused.value)
        assert await till.status() == before  # nothing recorded


async def test_the_largest_amounts_are_recorded_and_counted(tmp_path: Path) -> None:
    async with await stocked_till(tmp_path) as till:
        await till.record("sale", sale(("bread", 1, INTEGER_MAX), cash=INTEGER_MAX))
        opened = await till.record("shift_open", {"cashier_id": "ann",
                                                  "opening_cash": INTEGER_MAX})
        assert await till.expected_cash(SHIFT) == 10000 + INTEGER_MAX
        assert await till.expected_cash(opened.client_id) == INTEGER_MAX
    async with await Till.open(tmp_path) as till:
        assert (await till.verify()).ok


async def test_a_store_of_schema_version_4_keeps_its_money_views_when_upgraded(
        tmp_path: Path) -> None:
    """Version 4 kept every view in millionths; version 5 keeps money as it is."""
    async with await stocked_till(tmp_path) as till:
        await till.record("stock_move", {"product_id": "bread", "direction": "in",
                                         "qty": "2.5", "reason": "delivery"})
        await till.record("sale", sale(("tomato", "0.5", 460)))
    with sqlite3.connect(tmp_path / DB_FILE) as conn:
        conn.execute("UPDATE views SET value = value * 1000000 WHERE view != 'stock'")
        conn.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    async with await Till.open(tmp_path) as till:
        assert await till.expected_cash(SHIFT) == 10000 + 230
        rows = {r["product_id"]: r for r in await till.stock()}
        assert (rows["bread"]["qty"], rows["tomato"]["suggested_price"]) == ("2.5", 460)

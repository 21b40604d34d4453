"""tools/bench_reports: the year it writes is one the reports read as written (every
sale numbered once, gapless), and the benchmark runs end to end on a small year."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.relay.databases import ADMIN_URL, require_server
from tillsync.relay import reports
from tillsync.relay.storage.sqlite import SQLiteStorage
from tillsync.tools import bench_reports


async def test_the_generated_year_is_what_the_reports_read(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    await (await SQLiteStorage.open(path)).close()
    bench_reports.fill(path, 900)
    storage = await SQLiteStorage.open(path)
    try:
        days = await reports.sales_by_period(storage, bench_reports.STORE, "day")
        register = await reports.invoice_register(storage, bench_reports.STORE)
        shifts = await reports.shifts(storage, bench_reports.STORE)
        tills = await reports.sales_by_till(storage, bench_reports.STORE)
    finally:
        await storage.close()
    assert sum(d["sales"] for d in days) == 900 and len(days) == 365
    assert register["series"] == [{"series": "INV", "issued": 900, "highest": 900,
                                   "missing": []}]
    assert sum(d["revenue"] for d in days) == sum(i["total"] for i in register["invoices"])
    assert (register["count"], register["total"]) == (900, sum(d["revenue"] for d in days))
    assert sum(s["cash_sales"] for s in shifts) == sum(d["revenue"] for d in days)
    assert sorted(t["sales"] for t in tills) == [300, 300, 300]


def test_the_benchmark_prints_every_report(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_reports.main(["--sales", "400", "--repeat", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["sales"] == 400 and len(result["reports"]) == 13
    assert "invoice of a ticket" in [r["report"] for r in result["reports"]]
    assert all(r["year_ms"] > 0 for r in result["reports"])


@pytest.mark.postgres
def test_the_benchmark_times_postgresql_on_a_copy_of_the_same_year(
        capsys: pytest.CaptureFixture[str]) -> None:
    require_server()
    assert bench_reports.main(["--sales", "300", "--repeat", "1", "--json",
                               "--pg", ADMIN_URL]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["report"] for r in result["postgres"]] == [r["report"] for r in result["reports"]]
    assert all(r["year_ms"] > 0 for r in result["postgres"])

"""tools/bench_relay runs end to end on a small load, all four steps: the relay as its
own process on SQLite, on PostgreSQL with one process and with two, and the naive REST
baseline; each run's database checked afterwards (every sale numbered once, gapless per
store), every receipt delivered, the CPU per sale read for each."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.relay.databases import ADMIN_URL, require_server

ROOT = Path(__file__).resolve().parents[2]

TILLS, STORES, SALES, BATCH, BASELINE_SALES = 4, 2, 50, 20, 50
ENTRIES_PER_TILL = SALES + 1  # the sales and one shift_open
FRAMES_PER_TILL = -(-ENTRIES_PER_TILL // BATCH)


@pytest.mark.postgres
def test_the_relay_benchmark_checks_every_run_and_reads_its_cpu() -> None:
    require_server()
    done = subprocess.run(
        [sys.executable, "-m", "tillsync.tools.bench_relay", "--tills", str(TILLS),
         "--stores", str(STORES), "--sales-per-till", str(SALES), "--batch", str(BATCH),
         "--baseline-sales-per-till", str(BASELINE_SALES), "--pg", ADMIN_URL,
         "--pg-workers", "2", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    store_entries = TILLS // STORES * ENTRIES_PER_TILL
    store_sales = TILLS // STORES * SALES
    stores = [f"bench-store-{i}" for i in range(1, STORES + 1)]
    runs = {"relay": ("sqlite", 1), "relay_pg": ("postgresql", 1),
            "relay_pg_workers": ("postgresql", 2)}
    for key, (backend, processes) in runs.items():
        run = report[key]
        assert (run["backend"], run["processes"], run["relay_exit"]) == (backend, processes, 0)
        assert run["sales"] == TILLS * SALES and run["entries"] == TILLS * ENTRIES_PER_TILL
        assert run["batches"] == TILLS * FRAMES_PER_TILL == run["batch_latency_ms"]["n"]
        # Every till received every receipt of its store (two tills a store), once.
        assert run["receipts_delivered"] == TILLS * store_entries
        check = run["check"]
        assert check["ok"] and check["problems"] == [], (key, check["problems"])
        assert [(s["store"], s["series"], s["invoices"], s["first"], s["last"], s["gapless"])
                for s in check["series"]] == [(store, "INV", store_sales, 1, store_sales, True)
                                              for store in stores]
        assert check["receipts"] == {"accepted": TILLS * ENTRIES_PER_TILL}
        assert check["rejected"] == 0
        assert set(check["warnings"]) <= {"low_stock"}
        assert run["relay_cpu_us_per_sale"] > 0 and run["loadgen_cpu_us_per_sale"] > 0
        assert set(run["relay_cpu"]) >= {"main_s", "threads_s", "prepare_s"}
        assert (run["postgres_cpu_pct"] is not None) == (backend == "postgresql")
    baseline = report["baseline"]
    assert baseline["sales"] == TILLS * BASELINE_SALES == baseline["request_latency_ms"]["n"]
    assert baseline["check"] == {"ok": True, "problems": []}
    assert baseline["server_exit"] == 0
    assert baseline["server_cpu_us_per_sale"] > 0 and baseline["loadgen_cpu_us_per_sale"] > 0
    assert report["postgresql"]
    targets = report["targets"]
    assert targets["relay_cpu_us_per_sale"] == report["relay"]["relay_cpu_us_per_sale"]
    assert targets["baseline_cpu_us_per_sale"] == baseline["server_cpu_us_per_sale"]
    assert targets["cpu_ratio"] > 0

"""tools/bench_ingest runs end to end on a small load: every sale decided and timed,
none rejected (the tool raises on a rejection)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_commit_benchmark_times_every_commit_after_the_warm_up() -> None:
    # 2 tills x 1,500 sales (+ shift_open) in batches of 500: 4 commits, the last 2 timed.
    done = subprocess.run(
        [sys.executable, "-m", "tillsync.tools.bench_ingest", "--tills", "2", "--sales-per-till",
         "1500", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    report = json.loads(done.stdout)
    assert report["sales_timed"] == 2 * 500 + 2 * 1
    per_sale = report["us_per_sale"]
    assert per_sale["wall"] > 0 and per_sale["event_loop_cpu"] > 0
    assert report["sales_per_second"] > 0
    assert report["wall_us_per_sale_first_tenth"] > 0
    assert report["wall_us_per_sale_last_tenth"] > 0
    assert "commit 4/4" in done.stderr


def test_the_commit_benchmark_can_leave_rows_out_as_an_experiment() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tillsync.tools.bench_ingest", "--tills", "2", "--sales-per-till",
         "1500", "--without", "receipts", "--without", "invoices", "--json"], cwd=ROOT,
        capture_output=True, text=True, timeout=300, check=True)
    report = json.loads(done.stdout)
    assert report["without"] == ["invoices", "receipts"]
    assert report["sales_timed"] == 2 * 500 + 2 * 1
    wrong = subprocess.run(
        [sys.executable, "-m", "tillsync.tools.bench_ingest", "--without", "entries"], cwd=ROOT,
        capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 2 and "invalid choice: 'entries'" in wrong.stderr

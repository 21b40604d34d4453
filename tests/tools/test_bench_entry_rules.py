"""tools/bench_entry_rules runs end to end at a tiny size and times every part it names;
only what it reports is checked, never how fast."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_entry_rules_benchmark_times_prepare_and_each_of_its_parts() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tillsync.tools.bench_entry_rules", "--sales", "200",
         "--repeats", "2", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300,
        check=True)
    report = json.loads(done.stdout)
    assert report["sales"] == 200
    assert set(report["parts_us"]) == {"decode", "schema", "hash", "pack_again",
                                       "line_figures"}
    assert all(value > 0 for value in report["parts_us"].values()), report
    for name in ("canonical_us", "client_id_us", "negative_line_us", "prepare_us",
                 "counter_rules_us"):
        assert report[name] > 0, (name, report)

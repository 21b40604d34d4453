"""tools/bench_connections runs end to end on a few connections: every device enrolled,
logged in and still connected when the relay's RSS is read (the relay counts each as
connected and authenticated), the pycrdt-websocket baseline's clients likewise, and the
RSS and CPU figures read for both."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

DEVICES = 10


def test_the_connections_benchmark_holds_every_connection_it_opens() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tillsync.tools.bench_connections", "--devices", str(DEVICES),
         "--concurrency", "4", "--rounds", "1", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert len(report["tillsync"]) == len(report["baseline"]) == 1
    tillsync, baseline = report["tillsync"][0], report["baseline"][0]
    assert "skipped" not in baseline, baseline
    # DEVICES measured, plus the one that logged in first.
    assert tillsync["relay_connected_devices"] == DEVICES + 1
    for side in (tillsync, baseline):
        assert side["connections"] == DEVICES
        assert side["open_at_rss_read"] == DEVICES + 1
        assert side["rss_before_kib"] > 0 and side["rss_after_kib"] > 0
        assert side["rss_kib_per_connection"] == round(
            (side["rss_after_kib"] - side["rss_before_kib"]) / DEVICES, 2)
        assert side["open_s"] > 0 and side["server_cpu_s"] >= 0
    assert baseline["version"]

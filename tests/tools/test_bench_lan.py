"""tools/bench_lan runs end to end on a small load: five tills as real ``peer run``
processes in a full mesh, every edit reaching every other till, the offline sales
numbered gapless once the relay is back, and both pycrdt-websocket baselines run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

TILLS, EDITS, SALES = 5, 5, 2


def test_the_lan_benchmark_delivers_every_edit_and_runs_its_baselines() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tillsync.tools.bench_lan", "--tills", str(TILLS),
         "--edits", str(EDITS), "--sales", str(SALES), "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    receivers = TILLS - 1
    propagation = report["propagation"]
    # One delay per edit and receiving till: each edit was seen committed on every other.
    assert (propagation["edits"], propagation["receivers"], propagation["samples"]) == (
        EDITS, receivers, EDITS * receivers)
    assert 0 < propagation["p50_ms"] <= propagation["p95_ms"] <= propagation["p99_ms"] \
        <= propagation["max_ms"]
    assert propagation["lan_bytes_per_edit"] > 0
    assert propagation["lan_bytes_per_edit_per_receiver"] > 0
    convergence = report["convergence"]
    assert (convergence["tills"], convergence["sales_per_till"], convergence["entries"]) == (
        TILLS, SALES, TILLS * (SALES + 1))
    assert convergence["invoices_gapless"] is True and convergence["each_sale_once"] is True
    assert convergence["relay_to_carrier_numbered_s"] > 0
    for key in ("baseline", "baseline_persisted"):
        baseline = report[key]
        assert "skipped" not in baseline, baseline
        assert (baseline["edits"], baseline["receivers"], baseline["samples"]) == (
            EDITS, receivers, EDITS * receivers)
        assert 0 < baseline["p50_ms"] <= baseline["p95_ms"] <= baseline["max_ms"]
        assert baseline["link_bytes_per_edit"] > 0 and baseline["version"]

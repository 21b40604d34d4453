"""tools/bench_bootstrap and tools/bench_store run end to end at a tiny size, so the
benchmarks do not rot; only what they count is checked, never how fast."""

from __future__ import annotations

import json

import pytest

from tillsync.tools import bench_bootstrap, bench_store


def test_the_bootstrap_benchmark_counts_one_snapshot_to_the_fresh_till(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_bootstrap.main(["--products", "300", "--runs", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    snapshot = result["snapshot_bytes"]
    [run] = result["runs"]
    # The till got the snapshot and little else: a few hundred bytes of handshake,
    # certificate, framing and sync messages, not the changes a second time.
    assert snapshot < run["bytes_to_till"] < snapshot + 4096, result
    assert run["can_sell_s"] > 0 and run["round_s"] >= run["can_sell_s"]
    assert set(result["targets"]) >= {"bytes_within_1_1x_snapshot", "can_sell_within_0_3_s"}
    [load] = result["automerge_load_cpu_s"]  # the floor: Automerge's own load, timed
    assert load > 0
    [baseline] = result["pycrdt"]  # pycrdt-websocket is in the test extra too
    assert baseline["bytes_to_client"] > 0 and baseline["ready_s"] > 0


def test_the_store_benchmark_records_every_sale_it_times(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_store.main(["--sales", "40", "--warmup", "5", "--concurrent-sales", "48",
                             "--writers", "8", "--products", "60", "--batch", "20",
                             "--opens", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["sales"]["tillsync"]["count"] == 40  # after 5 untimed warm-up sales
    [concurrent] = result["concurrent"]
    assert concurrent["writers"] == 8 and concurrent["count"] == 48
    eight = result["target_concurrent"]  # the target is judged on the 8 callers too
    assert eight["writers"] == 8 and eight["p99_ms"] == concurrent["p99"]
    assert eight["met"] == (concurrent["p99"] <= 5.0)
    # Group commit: eight writers at once share commits.
    assert 1 <= concurrent["commits"] < 48, concurrent
    assert result["catalogue"]["products"] == 60

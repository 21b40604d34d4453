"""``python -m tillsync.tools.fuzz_frames`` runs end to end: it starts its own relay, sends the
frames, and reports what came back, what changed and whether an honest device still
syncs; bad usage exits 2 with one line saying what to do."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def fuzz(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tillsync.tools.fuzz_frames", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_the_command_reports_frames_outcomes_and_what_changed() -> None:
    done = fuzz("--frames", "300", "--seed", "3", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert (report["frames"], report["logged_in"]) == (300, 150)
    assert (report["crashes"], report["internal_errors"], report["undefined_answers"],
            report["unanswered"], report["stored_changed"], report["problems"]) == (
        0, 0, 0, 0, [], [])
    assert report["honest_sale_invoice"] == 2
    assert sum(report["outcomes"].values()) == 300
    assert report["frames_per_second"] > 0


def test_bad_usage_exits_2_saying_what_is_wrong() -> None:
    done = fuzz("--frames", "1")
    assert done.returncode == 2
    assert "--frames must be at least 2" in done.stderr

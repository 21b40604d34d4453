"""tools/bench_amrepo runs end to end on a small store: first syncs from the till and
from automerge-repo's own Node server, and edits from both seen by their Node clients."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.doubles import REPO
from tests.js_clients import node


def test_the_automerge_repo_benchmark_times_both_servers_first_syncs_and_edits() -> None:
    node()  # skips (or fails in CI) without tests/js's packages
    done = subprocess.run(
        [sys.executable, "-m", "tillsync.tools.bench_amrepo", "--products", "40", "--rounds",
         "1", "--edits", "6", "--json"], cwd=REPO, capture_output=True, text=True,
        timeout=300, check=True)
    report = json.loads(done.stdout)
    for side in ("tillsync", "baseline"):
        first = report["first_sync"][side]
        assert first["bytes"] >= report["snapshot_bytes"] / 2 and first["frames"] >= 1
        edits = report["edit_ms"][side]
        assert edits["count"] == 6
        assert 0 < edits["arrived_p50"] <= edits["p50"] <= edits["max"]

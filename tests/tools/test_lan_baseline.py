"""tools/lan_baseline's persisted set-up runs end to end at a tiny size, so the baseline
does not rot; only what it counts is checked, never how fast."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

pytest.importorskip("pycrdt.websocket")

from tillsync.tools import lan_baseline_procs  # noqa: E402


def test_the_persisted_baseline_times_every_delivery_and_stores_every_update(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lan_baseline_procs.tempfile, "TemporaryDirectory",
                        lambda prefix: _Kept(tmp_path))
    result = asyncio.run(lan_baseline_procs.pycrdt_persisted(3, receivers=2))
    assert result["samples"] == 6 and len(result["latencies_ms"]) == 6  # type: ignore[arg-type]
    assert all(d > 0 for d in result["latencies_ms"])  # type: ignore[attr-defined]
    assert float(result["link_bytes_per_edit"]) > 0  # type: ignore[arg-type]
    for i in range(3):  # editor and both receivers stored each of the 3 edits, durably
        db = sqlite3.connect(tmp_path / f"client{i}.db")
        try:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert db.execute("SELECT count(*) FROM updates").fetchone()[0] >= 3
        finally:
            db.close()


class _Kept:
    """A ``TemporaryDirectory`` stand-in that leaves the files for the test to read."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> str:
        return str(self.path)

    def __exit__(self, *exc: object) -> None:
        return None

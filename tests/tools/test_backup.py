"""``peer backup`` and ``relay backup``: copies taken from live processes restore whole,
with their files (expense receipts, product images), and without partial ones."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.relay.processes import ENV, Relays, TillDir, cli_json, run_cli
from tests.relay.test_attachments import _fetch, _token
from tests.relay.test_daemon import PRODUCTS, SHIFT, sale, wait_until

EXPENSE = {"amount": 990, "category": "cleaning", "description": "soap", "method": "cash"}


def _attach(till: TillDir, path: Path, data: bytes) -> str:
    """Record an expense with ``data`` as its receipt; the file's hash."""
    path.write_bytes(data)
    run_cli("peer", "record", str(till.path), "expense", "--body", json.dumps(EXPENSE),
            "--attach", str(path))
    return hashlib.sha256(data).hexdigest()


def _at_relay(till: TillDir) -> dict[str, bool]:
    return {row["sha256"]: row["at_relay"]
            for row in cli_json("peer", "files", str(till.path))}


@pytest.mark.slow
def test_a_till_and_a_relay_backed_up_while_running_restore_with_nothing_lost(
        tmp_path: Path) -> None:
    with Relays(tmp_path) as relays:
        relay = relays.start()
        till = TillDir(tmp_path / "till", "Till 1")
        till.init(relay, "shop")
        till.put_many(PRODUCTS)
        till.record("shift_open", {"cashier_id": "ann", "opening_cash": 1000}, SHIFT)
        synced = [till.record("sale", sale())["client_id"] for _ in range(3)]
        sent = _attach(till, tmp_path / "sent.pdf", b"%PDF-1.7\n" + os.urandom(600 * 1024))
        till.sync()
        pending = [till.record("sale", sale())["client_id"] for _ in range(2)]
        kept = _attach(till, tmp_path / "kept.pdf", b"%PDF-1.7\n" + os.urandom(3000))
        # What a cut transfer leaves: never part of a backup.
        (till.path / "files" / "partial").mkdir(exist_ok=True)
        (till.path / "files" / "partial" / ("ab" * 32)).write_bytes(b"%PDF-1.7\n")
        (relay.data / "files" / "x").mkdir(parents=True)  # a store dir with no files yet

        # The daemon holds the store (LAN only, so the pending sales stay pending) and the
        # relay serves while both copies are taken.
        daemon = subprocess.Popen(
            [sys.executable, "-m", "tillsync.tools.cli",
             "peer", "run", str(till.path), "--no-relay",
             "--api-port", "0", "--lan-port", "0", "--no-mdns"], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, env=ENV, start_new_session=True)
        try:
            wait_until(lambda: (till.path / "api.json").exists(), "the daemon to hold the store")
            till_copy = cli_json("peer", "backup", str(till.path), str(tmp_path / "till-copy"))
            relay_copy = cli_json("relay", "backup", "--data", str(relay.data),
                                  str(tmp_path / "relay-copy"))
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=30)
        relay.kill()

        assert till_copy["verified"] and till_copy["pending"] == 3
        assert till_copy["entries"] == 1 + 3 + 2 + 2  # the shift, five sales, two expenses
        assert till_copy["attachments"]["count"] == 2
        assert relay_copy["verified"] and relay_copy["invoices"]["shop INV"] == {
            "count": 3, "last": 3}
        assert relay_copy["attachments"] == {"count": 1, "bytes": 9 + 600 * 1024,
                                             "problems": []}
        assert not (tmp_path / "till-copy" / "files" / "partial").exists()
        assert _at_relay(TillDir(tmp_path / "till-copy", "Till 1")) == {sent: True,
                                                                        kept: False}
        for copy in (tmp_path / "till-copy", tmp_path / "relay-copy"):
            keys = [p for p in copy.iterdir() if p.name.endswith(".key")]
            assert keys and all(p.stat().st_mode & 0o077 == 0 for p in keys)

        # Restore: serve the relay's copy, point the till's copy at it.
        restored = relays.start("restored", data=tmp_path / "relay-copy")
        copy = TillDir(tmp_path / "till-copy", "Till 1")
        assert run_cli("peer", "verify", str(copy.path)).returncode == 0
        # Both serve their files: the relay the one it had, the till both.
        status, body, _ = _fetch(restored, sent, _token(restored, "shop"), "shop")
        assert status == 200 and body == (tmp_path / "sent.pdf").read_bytes()
        for sha, name in ((sent, "sent.pdf"), (kept, "kept.pdf")):
            out = tmp_path / f"out-{name}"
            run_cli("peer", "file", str(copy.path), sha, "-o", str(out))
            assert out.read_bytes() == (tmp_path / name).read_bytes()
        report = copy.sync_json(restored.url)
        assert report["pending"] == 0
        assert report["files"] == 1 and _at_relay(copy) == {sent: True, kept: True}
        assert _fetch(restored, kept, _token(restored, "shop"), "shop")[0] == 200
        numbers = {r["client_id"]: r["invoice_no"] for r in copy.receipts(mine=True)
                   if r["status"] == "accepted" and r["kind"] == "sale"}
        assert [numbers[c] for c in synced + pending] == [1, 2, 3, 4, 5]
        register = cli_json("report", "invoices", "--data", str(restored.data),
                            "--store", "shop", "--json")
        assert register["count"] == 5
        assert [(s["issued"], s["highest"], s["missing"]) for s in register["series"]] == [
            (5, 5, [])]


def test_a_backup_never_overwrites(tmp_path: Path) -> None:
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "precious").write_text("keep me")
    (tmp_path / "till").mkdir()
    (tmp_path / "till" / "till.db").write_bytes(b"")
    done = run_cli("peer", "backup", str(tmp_path / "till"), str(tmp_path / "dest"),
                   check=False)
    assert done.returncode == 2 and "never overwrites" in done.stderr
    assert (tmp_path / "dest" / "precious").read_text() == "keep me"
    done = run_cli("relay", "backup", "--data", str(tmp_path / "nowhere"),
                   str(tmp_path / "new"), check=False)
    assert done.returncode == 2 and "relay.db is missing" in done.stderr
    assert not (tmp_path / "new").exists()

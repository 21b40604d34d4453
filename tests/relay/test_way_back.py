"""A till's way back, against real relay processes and tills driven by the command line:
a till that sold on its own joins a relay with everything it holds, and a till whose
numbering a refused entry stopped says so loudly."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.relay.processes import (
    RelayProcess,
    TillDir,
    enroll_code,
    invoices,
    run_cli,
)
from tests.relay.test_ops import sell
from tillsync.peer.log import canonical_body


def standalone(path: Path) -> tuple[TillDir, list[str]]:
    """A till of its own (no relay) with a catalogue, an open shift and three sales."""
    till = TillDir(path, "Till 1")
    run_cli("peer", "init", str(path), "--name", "Till 1")
    till.put("products", "bread", {"name": "Bread", "sku": "B1", "price": 320})
    till.put("cashiers", "ann", {"name": "Ann", "role": "cashier", "pin": "1234"})
    shift = till.record("shift_open", {"cashier_id": "ann", "opening_cash": 0})["client_id"]
    return till, [sell(till, shift)["client_id"] for _ in range(3)]


@pytest.mark.parametrize("verb", ["enroll", "init"])
def test_a_till_that_sold_on_its_own_joins_a_relay(tmp_path: Path, relay: RelayProcess,
                                                   verb: str) -> None:
    till, sales = standalone(tmp_path / "till")
    before = till.status()
    assert before["relay"] is None and before["pending"] == 4
    store = f"shop-{verb}"
    code = enroll_code(relay, store, "Till 1")
    extra = ("--name", "Till 1") if verb == "init" else ()
    result = run_cli("peer", verb, str(till.path), *extra, "--relay", relay.url, "--code", code)
    assert "log and master data kept" in result.stdout
    after = till.status()
    assert (after["store_id"], after["device_id"]) == (store, before["device_id"])
    assert after["pending"] == 4  # nothing went up yet, nothing was lost
    assert till.sync_json()["pending"] == 0
    numbered = {r["client_id"]: r for r in till.receipts(mine=True)}
    assert all("invoice_no" in numbered[s] for s in sales)
    assert {r["ticket"] for r in numbered.values() if r.get("ticket")} == {
        "TILL1-000001", "TILL1-000002", "TILL1-000003"}  # the tickets it printed
    # The catalogue made offline is at the relay: a new till of the store gets it.
    other = TillDir(tmp_path / "other", "Till 2")
    other.init(relay, store)
    other.sync()
    assert other.master("products")["bread"]["price"] == 320
    assert "ok:" in run_cli("peer", "verify", str(till.path)).stdout


def test_enrolling_twice_or_nothing_is_refused(tmp_path: Path, relay: RelayProcess) -> None:
    till = TillDir(tmp_path / "till", "Till 1")
    till.init(relay, "shop-twice")
    result = run_cli("peer", "enroll", str(till.path), "--relay", relay.url, "--code",
                     enroll_code(relay, "shop-twice", "Till 1"), check=False)
    assert result.returncode == 3 and "enrolled already" in result.stderr
    result = run_cli("peer", "enroll", str(tmp_path / "none"), "--relay", relay.url,
                     "--code", "X", check=False)
    assert result.returncode == 2 and "no tillsync store" in result.stderr
    assert json.loads(run_cli("peer", "status", str(till.path), "--json").stdout)[
        "store_id"] == "shop-twice"


def selling_till(tmp_path: Path, relay: RelayProcess, store: str) -> tuple[TillDir, str]:
    """An enrolled till that has sold once, all of it numbered; returns it and its shift."""
    till = TillDir(tmp_path / "till", "Till 1")
    till.init(relay, store)
    till.put("products", "bread", {"name": "Bread", "sku": "B1", "price": 320})
    till.put("cashiers", "ann", {"name": "Ann", "role": "cashier", "pin": "1234"})
    shift = till.record("shift_open", {"cashier_id": "ann", "opening_cash": 0})["client_id"]
    sell(till, shift)
    assert till.sync_json()["pending"] == 0
    return till, shift


def flip_a_bit_of(till: TillDir, body: dict[str, Any]) -> None:
    """A bit flipped on the till's disk, in one entry's body (the store closed)."""
    db = till.path / "till.db"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    raw = bytearray(db.read_bytes())
    stored = canonical_body(body)
    at = raw.find(stored)
    assert at > 0 and raw.find(stored, at + 1) < 0
    raw[at + len(stored) - 1] ^= 0x01  # the cash amount, off by one
    db.write_bytes(bytes(raw))


def numbered(relay: RelayProcess, store: str) -> list[int]:
    return sorted(row[1] for row in invoices(relay, store))


def carry_over(till: TillDir, relay: RelayProcess, store: str) -> dict[str, Any]:
    result = run_cli("peer", "enroll", str(till.path), "--relay", relay.url, "--code",
                     enroll_code(relay, store, "Till 1"), "--new-device", "--json")
    done: dict[str, Any] = json.loads(result.stdout)
    return done


def test_a_refused_entry_stops_the_till_loudly_and_it_has_a_way_forward(
        tmp_path: Path, relay: RelayProcess) -> None:
    store = "shop-flipped"
    till, shift = selling_till(tmp_path, relay, store)
    later = [till.record("sale", {  # seq 3, 4, 5, each its own body
        "lines": [{"product_id": "bread", "qty": str(n), "unit_price": 320}],
        "payments": [{"method": "cash", "amount": 320 * n}], "shift_client_id": shift})
        for n in (2, 3, 4)]
    flip_a_bit_of(till, later[0]["body"])
    result = till.sync(check=False)
    assert result.returncode == 4, (result.stdout, result.stderr)
    assert "entry seq 3" in result.stderr and "bad_signature" in result.stderr
    assert "--new-device" in result.stderr
    assert json.loads(result.stdout)["stopped"]["seq"] == 3
    status = till.status()
    assert (status["stopped"]["seq"], status["stopped"]["code"]) == (3, "bad_signature")
    assert status["stopped"]["behind"] == 2
    assert "STOPPED" in run_cli("peer", "status", str(till.path)).stdout
    # The way forward: the till enrolls again as a new device and carries them over.
    done = carry_over(till, relay, store)
    assert [row["seq"] for row in done["carried"]] == [4, 5], done["not_carried"]
    assert [row["seq"] for row in done["not_carried"]] == [3]  # named: it was damaged
    assert "signature does not verify" in done["not_carried"][0]["reason"]
    assert done["series"] == "TILL1R1"
    report = till.sync_json()
    assert report["stopped"] is None
    assert numbered(relay, store) == [1, 2, 3]  # every intact sale, no gap
    assert till.status()["stopped"] is None
    # The old identity retired: what it left behind is no longer counted as pending.
    run_cli("relay", "revoke", "--data", str(relay.data), "--store", store, "--device",
            done["old_device"], *(("--db", relay.db) if relay.db else ()))
    assert till.sync_json()["pending"] == 0
    checked = run_cli("peer", "verify", str(till.path), check=False)  # still there, named
    assert checked.returncode == 1 and "seq 3" in checked.stdout


def test_a_device_revoked_by_mistake_loses_nothing(tmp_path: Path,
                                                   relay: RelayProcess) -> None:
    store = "shop-revoked"
    till, shift = selling_till(tmp_path, relay, store)
    run_cli("relay", "revoke", "--data", str(relay.data), "--store", store, "--device",
            "Till 1", *(("--db", relay.db) if relay.db else ()))
    offline = [sell(till, shift)["client_id"] for _ in range(2)]
    result = till.sync(check=False)
    assert result.returncode == 4 and "--new-device" in result.stderr
    done = carry_over(till, relay, store)
    assert [row["client_id"] for row in done["carried"]] == offline
    assert till.sync_json()["pending"] == 0
    assert numbered(relay, store) == [1, 2, 3]
    mine = {r["client_id"]: r for r in till.receipts(mine=True)}
    assert all("invoice_no" in mine[row["new_client_id"]] for row in done["carried"])
    # Carrying again records nothing twice.
    assert carry_over(till, relay, store)["carried"] == []

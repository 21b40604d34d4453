"""``tillsync peer invoice``: a sale's final invoice, reprinted from the till's store, says
"assigned at sync" until the relay's receipt is back and the official number after; it
reads the store whether or not a ``peer run`` daemon holds it (a real relay process and
a real daemon, on SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.doubles import REPO
from tests.peer.lan_processes import wait_until
from tests.relay.processes import RelayProcess, TillDir, run_cli, stop

STORE = "store-reprint"
SHIFT = "2c4e6a8b-1d3f-4a5b-8c7d-9e0f1a2b3c4d"
SETTINGS = {"store_name": "Corner Shop", "receipt_header": "12 High Street",
            "receipt_footer": "Thank you", "currency": "EUR"}


@pytest.mark.slow
def test_a_reprint_says_assigned_at_sync_then_shows_the_official_number(
        tmp_path: Path, relay: RelayProcess) -> None:
    till = TillDir(tmp_path / "till", "Till R")
    till.init(relay, STORE)
    till.put_many([("products", "bread", {"name": "Bread", "sku": "B1", "price": 320}),
                   ("products", "milk", {"name": "Milk 1l", "sku": "M1", "price": 129}),
                   ("cashiers", "ann", {"name": "Ann", "role": "cashier", "pin": "1234"}),
                   ("settings", "store", SETTINGS)])
    till.record("shift_open", {"cashier_id": "ann", "opening_cash": 1000}, SHIFT)
    body = {"lines": [{"product_id": "bread", "qty": 2, "unit_price": 320},
                      {"product_id": "milk", "qty": 1, "unit_price": 129, "discount": 9}],
            "payments": [{"method": "cash", "amount": 500}, {"method": "card", "amount": 260}],
            "shift_client_id": SHIFT}
    said = run_cli("peer", "record", str(till.path), "sale", "--body", json.dumps(body)).stdout
    assert "official invoice number: assigned at sync" in said
    ticket = said.split(" ticket ")[1].split(";")[0]

    # Offline: the provisional ticket, and the number still to come.
    text = run_cli("peer", "invoice", str(till.path), ticket).stdout
    lines = text.splitlines()
    assert all(len(line) <= 42 for line in lines), text
    assert lines[0].strip() == "Corner Shop" and lines[1].strip() == "12 High Street"
    assert "assigned at sync" in text and "(pending)" in text
    assert any(line.startswith("Ticket") and line.endswith(ticket) for line in lines)
    assert any(line.startswith("TOTAL EUR") and line.endswith("7.60") for line in lines)
    assert any(line.strip().startswith("card") and line.endswith("2.60") for line in lines)
    assert "Milk 1l" in text and lines[-1].strip() == "Thank you"
    doc = json.loads(run_cli("peer", "invoice", str(till.path), ticket, "--json").stdout)
    assert (doc["invoice"], doc["official"], doc["ticket"], doc["total"]) == (
        None, False, ticket, 2 * 320 + 129 - 9)
    assert doc["note"] == "official invoice number assigned at sync"
    assert [(p["method"], p["amount"]) for p in doc["payments"]] == [("cash", 500),
                                                                     ("card", 260)]

    # After the sync: the official number the relay issued, as its register has it.
    assert till.sync_json()["pending"] == 0
    register = json.loads(run_cli("report", "invoices", *(
        ("--db", relay.db) if relay.db else ("--data", str(relay.data))),
        "--store", STORE, "--ticket", ticket, "--json").stdout)
    official = f"{register[0]['series']}-{register[0]['invoice_no']:06d}"
    doc = json.loads(run_cli("peer", "invoice", str(till.path), ticket, "--json").stdout)
    assert (doc["invoice"], doc["official"], doc["note"]) == (official, True, None)
    text = run_cli("peer", "invoice", str(till.path), ticket).stdout
    assert official in text and "assigned at sync" not in text

    # With a daemon holding the store: the same reprint, read-only beside it.
    log = open(tmp_path / "run.log", "wb")  # noqa: SIM115 - closed below
    daemon = subprocess.Popen(
        [sys.executable, "-m", "tillsync.tools.cli", "peer", "run", str(till.path), "--no-relay",
         "--lan-port", "0", "--no-mdns", "--api-port", "0"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO)},
        start_new_session=True)
    try:
        wait_until(lambda: (till.path / "api.json").exists(), "the daemon's HTTP API")
        assert run_cli("peer", "invoice", str(till.path), ticket).stdout == text
    finally:
        stop(daemon, signal.SIGTERM)
        log.close()

    missing = run_cli("peer", "invoice", str(till.path), "NOPE-000001", check=False)
    assert missing.returncode == 2 and "no sale with ticket 'NOPE-000001'" in missing.stderr

"""Roles at the relay (real processes): a till may not change prices or settings.

A back-office device and a till of one store.  The till refuses the edits itself; made
anyway by a modified build, they are refused by the relay (non-fatal ``forbidden``,
logged), never reach the relay's document nor the back office, and the till's sales in
the same round still go up; the back office's price edit is taken and reaches the till.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from tests.relay.processes import Relays, TillDir, rogue_put, run_cli

STORE = "shop-roles"


def sale(shift: str) -> dict[str, object]:
    return {"lines": [{"product_id": "bread", "qty": 1, "unit_price": 320}],
            "payments": [{"method": "cash", "amount": 320}], "shift_client_id": shift}


def test_a_tills_price_and_settings_edits_are_refused_and_its_sales_still_go_up(
    tmp_path: Path, relay_db: str | None,
) -> None:
    with Relays(tmp_path, relay_db) as relays:
        relay = relays.start()
        office, till = TillDir(tmp_path / "office", "Office"), TillDir(tmp_path / "till", "Till")
        office.init(relay, STORE, role="backoffice")
        till.init(relay, STORE, role="till")
        office.put("products", "bread", {"name": "Bread", "sku": "B1", "price": 320})
        office.put("cashiers", "ann", {"name": "Ann", "role": "cashier", "pin": "1234"})
        office.sync()
        till.sync()
        assert till.master("products")["bread"]["price"] == 320

        # An honest till refuses to edit a price or the settings (exit 2, nothing stored).
        for collection, record_id, body in (("products", "bread", '{"price": 1}'),
                                            ("settings", "store", '{"store_name": "X"}')):
            refused = run_cli("peer", "put", str(till.path), collection, record_id,
                              "--body", body, check=False)
            assert refused.returncode == 2, refused
            assert "only from a back-office or admin device" in refused.stderr
        assert till.master("products")["bread"]["price"] == 320
        assert till.master("settings") == {}

        # A modified build edits them anyway (its own copy takes them), and sells.
        rogue_put(till.path, [("products", "bread", {"price": 1}),
                              ("settings", "store", {"store_name": "Mine now"})])
        shift = str(uuid.uuid4())
        till.record("shift_open", {"cashier_id": "ann", "opening_cash": 0}, shift)
        sold = till.record("sale", sale(shift))["client_id"]
        report = till.sync_json()
        assert report["errors"] and report["errors"][0].startswith("forbidden: ")
        assert "price of product 'bread'" in report["errors"][0]
        assert "back-office or admin" in report["errors"][0]
        assert relay.wait_log("document changes refused")
        assert {r["client_id"]: r["status"] for r in till.receipts()}[sold] == "accepted"
        assert till.status()["last_error"].startswith("forbidden: ")

        # Nothing of it reached the relay's document, so nothing reached the office.
        office.sync()
        assert office.master("products")["bread"]["price"] == 320
        assert office.master("settings") == {}

        # The office's own price edit is taken and reaches the till.
        office.put("products", "bread", {"price": 350})
        office.sync()
        assert office.sync_json()["errors"] == []
        fresh = TillDir(tmp_path / "fresh", "Fresh")  # a device that knows only the relay's
        fresh.init(relay, STORE, role="till")
        fresh.sync()
        assert fresh.master("products")["bread"]["price"] == 350
        assert fresh.master("settings") == {}

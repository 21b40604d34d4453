"""Entries another till forwards over the LAN that the relay will reject by the shift
rules count for nothing in the receiving till's views; they are kept and forwarded all
the same (real processes).

A back-office device closes the open shift of a till it believes dead while the two are
apart; the till, alive after all, sells on in that shift.  Linked again, each holds the
other's entries: the back office counts none of the till's late entries (no stock
moved, no balance), the till counts its own, and the relay rejects them
``shift_closed`` when they reach it.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.peer.lan_processes import LanTill, linked, wait_until
from tests.relay.processes import Relays, cli_json, run_cli

STORE = "shop-lan-shift"
RECORDS = [("products", "bread", {"name": "Bread", "sku": "B1", "price": 320}),
           ("customers", "eve", {"name": "Eve"}),
           ("cashiers", "ann", {"name": "Ann", "role": "cashier", "pin": "1234"})]


def _sale(shift: str, method: str = "cash") -> dict[str, Any]:
    body: dict[str, Any] = {
        "lines": [{"product_id": "bread", "qty": 1, "unit_price": 320}],
        "payments": [{"method": method, "amount": 320}], "shift_client_id": shift}
    if method == "account":
        body["customer_id"] = "eve"
    return body


def _views(till: LanTill) -> tuple[Any, Any]:
    stock = {r["product_id"]: r["qty"] for r in cli_json("peer", "stock", str(till.path))}
    return stock.get("bread"), cli_json("peer", "balances", str(till.path))


@pytest.mark.slow
def test_forwarded_entries_the_relay_will_reject_count_for_nothing(tmp_path: Path) -> None:
    with Relays(tmp_path) as relays:
        relay = relays.start()
        office = LanTill(tmp_path / "office", "Office")
        till = LanTill(tmp_path / "till", "Till A")
        office.init(relay, STORE, role="backoffice")
        till.init(relay, STORE, role="till")
        office.put_many(RECORDS)
        for each in (office, till, office):  # master data out, certificates in
            each.sync()
        shift = str(uuid.uuid4())
        till.record("shift_open", {"cashier_id": "ann", "opening_cash": 1000}, shift)
        till.record("sale", _sale(shift))
        with linked(office, till):
            wait_until(lambda: office.entry_counts().get("sale") == 1, "the first sale")
        assert _views(office) == _views(till) == ("-1", {})

        # Apart: the office closes the shift and the relay hears of it; the till sells on.
        office.record("shift_close", {"open_shift_client_id": shift, "closing_cash": 1320,
                                      "variance_reason": "till thought dead"})
        office.sync()
        late = [till.record("sale", _sale(shift, "account"))["client_id"],
                till.record("cash_movement", {"direction": "in", "amount": 500,
                                              "reason": "float", "shift_client_id": shift}
                            )["client_id"]]
        with linked(office, till):
            wait_until(lambda: office.entry_counts().get("sale") == 2
                       and office.entry_counts().get("cash_movement") == 1
                       and till.entry_counts().get("shift_close") == 1, "the two logs")
        # Kept and held by both, counted only by the till that recorded them.
        assert _views(office) == ("-1", {})
        assert _views(till) == ("-2", {"eve": 320})
        for each in (office, till):
            assert cli_json("peer", "verify", str(each.path))["ok"] is True  # views = log

        # The office carries them to the relay, which rejects them by the same rule.
        office.sync()
        till.sync()
        receipts = {r["client_id"]: r for r in till.receipts()}
        assert [(receipts[c]["status"], receipts[c]["error"]["code"]) for c in late] == [
            ("rejected", "shift_closed")] * 2
        assert run_cli("peer", "log", str(office.path)).returncode == 0

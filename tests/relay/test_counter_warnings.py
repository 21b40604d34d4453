"""The counter's rules across tills, with a real relay and tills driven through the CLI,
on SQLite and PostgreSQL:

* a sale made on a till before it knew of a deletion or of ``active: false`` is accepted
  by the relay with warnings; once the till knows, it refuses such a sale itself;
* two tills that sell on account to one customer while apart, each within the limit,
  cross it together: the relay accepts the second sale with a ``credit_limit`` warning
  and ``report credit`` lists the customer until a payment brings it back;
* a till refunds a sale of another till that it knows only from the relay's receipt.
"""

from __future__ import annotations

import json
import uuid
from functools import partial
from pathlib import Path
from typing import Any

from tests.doubles import sale
from tests.relay.processes import RelayProcess, TillDir, cli_json, parallel, run_cli

PRODUCTS = {
    "bread": {"name": "Bread", "sku": "B1", "price": 320},
    "cheese": {"name": "Cheese", "sku": "C1", "price": 1890},
}


def _tills(tmp_path: Path, relay: RelayProcess, store: str) -> tuple[TillDir, TillDir]:
    """Two tills of ``store`` that both hold the catalogue, a cashier and customers."""
    a, b = TillDir(tmp_path / "a", "Till A"), TillDir(tmp_path / "b", "Till B")
    parallel(*(partial(till.init, relay, store) for till in (a, b)))
    a.put_many([("products", p, body) for p, body in PRODUCTS.items()]
               + [("cashiers", "ann", {"name": "Ann", "role": "cashier", "pin": "1234"}),
                  ("customers", "eve", {"name": "Eve"}),
                  ("customers", "bob", {"name": "Bob", "credit_limit": 50000})])
    assert a.sync_json()["pending"] == 0
    assert b.sync_json()["doc_changes"] > 0
    return a, b


def _shift(till: TillDir) -> str:
    return str(till.record("shift_open", {"cashier_id": "ann", "opening_cash": 0})["client_id"])


def _receipt(till: TillDir, client_id: str) -> dict[str, Any]:
    return next(r for r in till.receipts() if r["client_id"] == client_id)


def _credit(relay: RelayProcess, store: str) -> list[dict[str, Any]]:
    where = ["--db", relay.db] if relay.db else ["--data", str(relay.data)]
    rows: list[dict[str, Any]] = cli_json("report", "credit", *where, "--store", store)
    return rows


def test_a_sale_made_before_a_deletion_was_known_is_accepted_with_warnings(
        tmp_path: Path, relay: RelayProcess) -> None:
    store = f"store-{uuid.uuid4().hex[:8]}"
    a, b = _tills(tmp_path, relay, store)
    shift_b = _shift(b)
    # The back office (A) deletes cheese and the customer eve, and retires bread.
    run_cli("peer", "delete", str(a.path), "products", "cheese")
    run_cli("peer", "delete", str(a.path), "customers", "eve")
    a.put("products", "bread", {"active": False})
    a.sync_json()
    # B has not heard of it: it sells them all, as it may.
    sold = b.record("sale", {**sale(("cheese", 1, 1890), ("bread", 2, 320),
                                    shift_client_id=shift_b), "customer_id": "eve"})
    assert b.sync_json()["pending"] == 0
    receipt = _receipt(b, sold["client_id"])
    assert receipt["status"] == "accepted" and receipt["invoice_no"] >= 1
    assert sorted(receipt["warnings"], key=json.dumps) == sorted([
        {"code": "unknown_product", "product_id": "cheese"},
        {"code": "inactive_product", "product_id": "bread"},
        {"code": "unknown_customer", "customer_id": "eve"}], key=json.dumps)
    # Now B knows: the deleted product, the inactive one are refused at the counter.
    assert "cheese" not in b.master("products") and "eve" not in b.master("customers")
    refused = run_cli("peer", "record", str(b.path), "sale", "--body", json.dumps(
        sale(("cheese", 1, 1890), shift_client_id=shift_b)), check=False)
    assert refused.returncode == 2
    assert "unknown product 'cheese' (deleted" in refused.stderr
    assert "nothing was stored" in refused.stderr
    refused = run_cli("peer", "record", str(b.path), "sale", "--body", json.dumps(
        sale(("bread", 1, 320), shift_client_id=shift_b)), check=False)
    assert refused.returncode == 2
    assert "product 'bread' (Bread) is inactive" in refused.stderr
    assert b.status()["pending"] == 0


def test_tills_apart_crossing_a_credit_limit_get_a_warning_and_a_report_line(
        tmp_path: Path, relay: RelayProcess) -> None:
    store = f"store-{uuid.uuid4().hex[:8]}"
    a, b = _tills(tmp_path, relay, store)
    shift_a, shift_b = _shift(a), _shift(b)

    def on_account(shift: str, qty: int) -> dict[str, Any]:
        return {**sale(("bread", qty, 320), shift_client_id=shift), "customer_id": "bob",
                "payments": [{"method": "account", "amount": qty * 320}]}

    # Each till, on its own, stays within bob's 50000 ...
    first = a.record("sale", on_account(shift_a, 100))  # 32000
    second = b.record("sale", on_account(shift_b, 90))  # 28800
    refused = run_cli("peer", "record", str(b.path), "sale", "--body",
                      json.dumps(on_account(shift_b, 70)), check=False)
    assert refused.returncode == 2
    assert ("owes 28800 and this sale adds 22400 on account, 51200 in all, above the "
            "credit limit of 50000") in refused.stderr
    assert _credit(relay, store) == []
    # ... together they owe 60800: the relay accepts the later one with a warning.
    a.sync_json()
    b.sync_json()
    assert _receipt(a, first["client_id"])["warnings"] == []
    receipt = _receipt(b, second["client_id"])
    assert receipt["status"] == "accepted"
    assert receipt["warnings"] == [{"code": "credit_limit", "customer_id": "bob",
                                    "balance": 60800, "credit_limit": 50000}]
    assert _credit(relay, store) == [{"customer_id": "bob", "name": "Bob", "balance": 60800,
                                      "credit_limit": 50000, "over_by": 10800}]
    # A payment at either till brings it back under; the report no longer lists bob.
    b.record("customer_payment", {"customer_id": "bob", "amount": 20000, "method": "cash",
                                  "shift_client_id": shift_b})
    b.sync_json()
    assert _credit(relay, store) == []

    # A refunds B's sale, which it knows only from the relay's receipt.
    a.sync_json()
    assert _receipt(a, second["client_id"])["status"] == "accepted"
    assert second["client_id"] not in {e["client_id"] for e in cli_json(
        "peer", "log", str(a.path))}
    refund = a.record("refund", {"original_sale_client_id": second["client_id"],
                                 "method": "account", "customer_id": "bob", "amount": 320,
                                 "reason": "stale", "shift_client_id": shift_a,
                                 "lines": [{"product_id": "bread", "qty": 1,
                                            "unit_price": 320}]})
    a.sync_json()
    assert _receipt(a, refund["client_id"])["status"] == "accepted"
    unknown = run_cli("peer", "record", str(a.path), "refund", "--body", json.dumps(
        {"original_sale_client_id": str(uuid.uuid4()), "method": "cash", "amount": 1,
         "reason": "x", "lines": [{"product_id": "bread", "qty": 1, "unit_price": 1}]}),
        check=False)
    assert unknown.returncode == 2 and "neither its entry nor its receipt" in unknown.stderr

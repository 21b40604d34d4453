"""``tillsync demo``: one till selling with no network, end to end, in a scratch folder.

It makes a store, loads a small catalogue (one weighed, volatile product), opens a
shift, rings up sales with provisional tickets, holds and resumes a sale, takes a
customer payment, then shows stock, expected cash and a full verification of the
signed log.  The relay part (official invoice numbers) arrives with the relay.
"""

from __future__ import annotations

import argparse
import tempfile
import uuid
from pathlib import Path

from peer.store import Till
from peer.totals import sale_total


def _say(text: str) -> None:
    print(text, flush=True)


async def run(directory: Path) -> int:
    _say(f"== a till in {directory}, offline")
    info = await Till.init(directory, name="Till 1")
    _say(f"device {info['device_id']}, ticket series {info['series']}")
    async with await Till.open(directory) as till:
        catalogue = {
            "bread": {"name": "Sourdough loaf", "sku": "BRD-1", "price": 420,
                      "reorder_level": "10"},
            "milk": {"name": "Milk 1 l", "sku": "MLK-1", "price": 119, "reorder_level": "12"},
            "tomato": {"name": "Tomatoes", "sku": "TOM-KG", "price": 390, "unit": "kg",
                       "volatile": True},
        }
        for product_id, product in catalogue.items():
            await till.put("products", product_id, product)
        await till.put("cashiers", "ann", {"name": "Ann", "role": "cashier", "pin": "4821"})
        await till.put("customers", "cafe", {"name": "Corner Cafe", "credit_limit": 20000})
        await till.put("settings", "store", {"store_name": "Demo Grocer", "currency": "EUR"})
        _say("catalogue: 3 products (tomatoes sold by weight), 1 cashier, 1 customer")
        await till.record("stock_move", {"product_id": "bread", "direction": "in", "qty": 24,
                                         "reason": "morning delivery"})
        await till.record("stock_move", {"product_id": "milk", "direction": "in", "qty": 30,
                                         "reason": "morning delivery"})

        shift = str(uuid.uuid4())
        await till.record("shift_open", {"cashier_id": "ann", "opening_cash": 15000},
                          client_id=shift)
        _say("shift opened with 150.00 in the drawer")
        baskets: list[tuple[list[tuple[str, int | str, int]], str, str | None]] = [
            ([("bread", 2, 420), ("milk", 3, 119)], "cash", None),
            ([("tomato", "0.75", 410)], "card", None),
            ([("bread", 1, 420), ("tomato", "1.2", 395)], "account", "cafe"),
        ]
        for lines, method, customer in baskets:
            total = sale_total({"qty": q, "unit_price": p} for _, q, p in lines)
            body: dict[str, object] = {
                "lines": [{"product_id": p, "qty": q, "unit_price": u} for p, q, u in lines],
                "payments": [{"method": method, "amount": total}],
                "shift_client_id": shift,
                "client_total": total,
            }
            if customer:
                body["customer_id"] = customer
            entry = await till.record("sale", body)
            _say(f"sale {entry.ticket}: {total / 100:.2f} by {method}")
        held = await till.record("held_sale", {"lines": [{"product_id": "milk", "qty": 2,
                                                          "unit_price": 119}]})
        resumed = await till.record("sale", {
            "lines": [{"product_id": "milk", "qty": 2, "unit_price": 119}],
            "payments": [{"method": "cash", "amount": 238}],
            "shift_client_id": shift, "held_transaction_client_id": held.client_id,
        })
        _say(f"held a basket, resumed it as sale {resumed.ticket}")
        await till.record("customer_payment", {"customer_id": "cafe", "amount": 500,
                                               "method": "cash", "shift_client_id": shift})

        _say("\n== derived from the log")
        for row in await till.stock():
            if row["volatile"]:
                _say(f"  {row['name']:<16} volatile, suggested price "
                     f"{row['suggested_price'] / 100:.2f}/kg")
            else:
                _say(f"  {row['name']:<16} {row['qty']:>6} in stock"
                     + ("  (below reorder level)" if row.get("low") else ""))
        _say(f"  expected cash in the drawer: {await till.expected_cash(shift) / 100:.2f}")
        _say(f"  Corner Cafe owes: {await till.balance('cafe') / 100:.2f}")
        pending, _ = await till.pending(limit=0)
        _say(f"  {pending} entries wait for the relay's acknowledgement")
        report = await till.verify()
        _say(f"\n== verify: {'ok' if report.ok else 'FAILED'}, {report.entries} entries, "
             "every hash link and Ed25519 signature checked")
    _say(f"\nlook around: tillsync peer status {directory}; tillsync peer log {directory}")
    return 0 if report.ok else 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, help="where to make the store (default: a new "
                        "folder under the system's temporary directory)")


async def demo(args: argparse.Namespace) -> int:
    directory = args.dir or Path(tempfile.mkdtemp(prefix="tillsync-demo-")) / "till1"
    return await run(directory)

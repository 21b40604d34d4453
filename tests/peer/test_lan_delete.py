"""A deletion reaches three tills over the LAN with the relay down (real processes), and
the relay once it is back; a till then refuses to sell the deleted product.

Three tills of one store, each with its ``peer run`` daemon linked to the others by the
static list; the relay is killed before the daemons start.  The delete is made with
``peer delete`` while a daemon holds the store, so it goes through the daemon's HTTP
API; another till's delta read lists the deleted ids since a cursor taken before.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from tests.peer.http_client import Api
from tests.peer.lan_processes import LanTill, linked, wait_until
from tests.relay.processes import Relays, query, run_cli

STORE = "shop-lan-delete"
RECORDS = [("products", "bread", {"name": "Bread", "sku": "B1", "price": 320}),
           ("products", "cheese", {"name": "Cheese", "sku": "C1", "price": 1890}),
           ("customers", "eve", {"name": "Eve", "phone": "555-0100"}),
           ("cashiers", "ann", {"name": "Ann", "role": "cashier", "pin": "1234"})]


def _sale(shift: str, product: str, price: int) -> str:
    return json.dumps({"lines": [{"product_id": product, "qty": 1, "unit_price": price}],
                       "payments": [{"method": "cash", "amount": price}],
                       "shift_client_id": shift})


@pytest.mark.slow
def test_a_deletion_reaches_three_tills_over_the_lan_with_the_relay_down(
        tmp_path: Path) -> None:
    with Relays(tmp_path) as relays:
        relay = relays.start()
        tills = [LanTill(tmp_path / f"till{i}", f"Till {i}") for i in (1, 2, 3)]
        for till in tills:
            till.init(relay, STORE)
        tills[0].put_many(RECORDS)
        for till in tills:  # master data out, certificates in
            till.sync()
        assert all(till.get("products", "cheese") for till in tills)
        relay.kill()  # the shop's internet is down from here on

        one, two, three = tills
        with linked(*tills):
            wait_until(lambda: all(sum(p["connected"] for p in t.lan()["peers"]) == 2
                                   for t in tills), "every till to link with the other two")
            api = Api.of(three.path)
            cursor = api.call("GET", "/api/master/{collection}", collection="products"
                              ).body["sync_cursor"]

            done = run_cli("peer", "delete", str(one.path), "products", "cheese")
            assert "deleted products record 'cheese'" in done.stdout
            run_cli("peer", "delete", str(two.path), "customers", "eve")
            for till in tills:
                wait_until(lambda t=till: t.get("products", "cheese") is None
                           and t.get("customers", "eve") is None,
                           f"the deletions on {till.name}")
                assert till.get("products", "bread") is not None

            delta = api.call("GET", "/api/master/{collection}", collection="products",
                             query=f"since={cursor}").body
            assert delta["deleted_ids"] == ["cheese"] and delta["records"] == {}
            gone = api.call("DELETE", "/api/master/{collection}/{id}", collection="products",
                            id="cheese")
            assert gone.status == 404 and gone.body["error"]["code"] == "not_found"

            # Selling the deleted product is refused at the till; bread still sells.
            shift = str(uuid.uuid4())
            three.record("shift_open", {"cashier_id": "ann", "opening_cash": 0}, shift)
            refused = run_cli("peer", "record", str(three.path), "sale", "--body",
                              _sale(shift, "cheese", 1890), check=False)
            assert refused.returncode == 2, refused.stderr
            assert "unknown product 'cheese' (deleted" in refused.stderr
            three.record("sale", json.loads(_sale(shift, "bread", 320)))

            # The relay learns the deletions from the first till to reach it.
            relay.start()
            wait_until(lambda: one.status()["pending"] == 0, "the entries at the relay",
                       timeout=60)
        rows = query(relay, "SELECT count(*) FROM entries WHERE store = ?", (STORE,))
        assert int(rows[0][0]) == 2
        fresh = LanTill(tmp_path / "till4", "Till 4")
        fresh.init(relay, STORE)
        fresh.sync()
        assert fresh.get("products", "cheese") is None and fresh.get("customers", "eve") is None
        assert fresh.get("products", "bread") is not None
        for till in tills:
            assert "Traceback" not in till.log().split("KeyboardInterrupt")[0], till.log()[-3000:]

"""automerge-repo clients (Node, tests/js) hold the store's master document through a
till's ``peer run``: a relay, an admin till and a till-role till linked on the LAN."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import automerge.core as am
import pytest

from tests.doubles import REPO
from tests.js_clients import JsClient, NodeScript, refused_status
from tests.markdown import blocks_under
from tests.peer.http_client import Api
from tests.peer.lan_processes import (
    LanTill,
    free_port,
    linked,
    office_and_till,
    wait_until,
)
from tests.relay.processes import RelayProcess
from tillsync.peer.amrepo.protocol import document_url
from tillsync.peer.store import Till

STORE = "shop-amrepo"
MASTER = [("products", "bread", {"name": "Bread", "sku": "B1", "price": 320}),
          ("products", "milk", {"name": "Milk", "sku": "M1", "price": 110}),
          ("customers", "acme", {"name": "ACME"})]


class Shop:
    def __init__(self, root: Path, relay: RelayProcess, office: LanTill, till: LanTill
                 ) -> None:
        self.root, self.relay, self.office, self.till = root, relay, office, till
        self.clients = 0

    def api(self, till: LanTill) -> Api:
        return Api.of(till.path)

    def ws_url(self, till: LanTill, token: str | None = None) -> str:
        api = self.api(till)
        return api.base.replace("http://", "ws://") + "/automerge?token=" + (
            api.token if token is None else token)

    def client(self, till: LanTill, actor: str | None = None) -> JsClient:
        """A Node client of ``till``; ``actor``: the device whose id starts its actor."""
        self.clients += 1
        hex_actor = None if actor is None else f"{uuid.UUID(actor).hex}{self.clients:08x}"
        return JsClient(self.ws_url(till), document_url(STORE),
                        self.root / f"node{self.clients}.log", hex_actor)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    root = tmp_path_factory.mktemp("amrepo")
    with office_and_till(root, STORE, MASTER) as (relay, office, till):
        office.sync()
        till.sync()
        with linked(office, till):
            yield Shop(root, relay, office, till)


def device(till: LanTill) -> str:
    return str(till.status()["device_id"])


def test_every_till_names_the_same_document_and_a_node_client_reads_it(shop: Shop) -> None:
    for till in (shop.office, shop.till):
        answer = shop.api(till).call("GET", "/api/automerge")
        assert answer.status == 200
        assert answer.body["url"] == document_url(STORE)
    with shop.client(shop.office) as js:
        assert js.first["products"]["bread"] == {"name": "Bread", "sku": "B1", "price": 320,
                                                 "volatile": False, "active": True}


def test_a_python_put_reaches_a_connected_node_client(shop: Shop) -> None:
    with shop.client(shop.till) as js:
        api = shop.api(shop.office)
        assert api.call("PUT", "/api/master/products/bread", {"price": 335}).status == 200
        doc = js.wait(["products", "bread", "price"], 335)
        assert doc["products"]["bread"]["name"] == "Bread"


def test_a_node_edit_reaches_the_other_till_over_the_lan_and_the_relay(shop: Shop) -> None:
    """Written as automerge-repo writes by default: plain strings, so Automerge Text."""
    with shop.client(shop.till, device(shop.till)) as js:
        js.change((["products", "milk", "name"], "Whole milk", "string"),
                  (["customers", "corner"], {"name": "Corner Cafe", "phone": "555"}, "object"))
        wait_until(lambda: (shop.till.get("products", "milk") or {}).get("name")
                   == "Whole milk", "the edit stored on the client's own till")
        wait_until(lambda: (shop.office.get("customers", "corner") or {}).get("name")
                   == "Corner Cafe", "the new customer on the other till, over the LAN")
    assert shop.office.get("products", "milk") == {
        "name": "Whole milk", "sku": "M1", "price": 110, "volatile": False, "active": True}
    # The relay got it too: a till that was never on the LAN syncs and finds it there.
    newcomer = LanTill(shop.root / "newcomer", "Newcomer")
    newcomer.init(shop.relay, STORE, role="till")
    wait_until(lambda: newcomer.sync(check=False) is not None and (
        newcomer.get("customers", "corner") or {}).get("phone") == "555",
        "the Node client's customer at the relay")
    assert (newcomer.get("products", "milk") or {}).get("name") == "Whole milk"


def test_concurrent_edits_from_node_and_python_converge_everywhere(shop: Shop) -> None:
    with shop.client(shop.office, device(shop.office)) as one, \
            shop.client(shop.till, device(shop.till)) as two:
        office = shop.api(shop.office)
        one.change((["products", "bread", "sku"], "B-ONE", "immutable"),
                   (["customers", "acme", "phone"], "111", "immutable"))
        two.change((["products", "bread", "name"], "Rye bread", "string"),
                   (["customers", "acme", "phone"], "222", "immutable"))
        assert office.call("PUT", "/api/master/customers/{id}", {"email": "a@acme.test"},
                           id="acme").status == 200
        for js in (one, two):
            js.wait(["customers", "acme", "email"], "a@acme.test")
            js.wait(["products", "bread", "name"], "Rye bread")
            js.wait(["products", "bread", "sku"], "B-ONE")
        # Both wrote the phone: one value wins, the same one on every side.
        phone = one.read()["customers"]["acme"]["phone"]
        assert phone in ("111", "222")
        two.wait(["customers", "acme", "phone"], phone)
        for till in (shop.office, shop.till):
            wait_until(lambda t=till: t.get("customers", "acme") == {
                "name": "ACME", "active": True, "email": "a@acme.test", "phone": phone},
                f"the merged customer on {till.name}")
            wait_until(lambda t=till: (t.get("products", "bread") or {}).get("sku") == "B-ONE"
                       and (t.get("products", "bread") or {}).get("name") == "Rye bread",
                       f"the merged product on {till.name}")
        assert one.read()["customers"] == two.read()["customers"]


def refused(js: JsClient, what: str) -> str:
    errors: list[str] = wait_until(js.errors, f"an error frame ({what})")
    return errors[0]


def test_a_till_role_node_clients_price_edit_is_refused_and_goes_nowhere(shop: Shop) -> None:
    before = shop.till.get("products", "milk")
    assert before is not None
    with shop.client(shop.till, device(shop.till)) as js:
        js.change((["products", "milk", "price"], 1, "int"),
                  (["products", "milk", "sku"], "CHEAP", "immutable"))
        error = refused(js, "a price by a till")
        assert "the price of product 'milk'" in error and "role till" in error, error
    wait_until(lambda: "document changes refused: the price of product 'milk'"
               in shop.till.log(), "the refusal in the till's log")
    # Nothing of that change was applied, stored or forwarded: not even its sku.
    assert shop.till.get("products", "milk") == before
    assert shop.office.get("products", "milk") == before
    # The same edit under the admin till's device id passes.
    with shop.client(shop.office, device(shop.office)) as js:
        js.change((["products", "milk", "price"], 115, "int"))
        wait_until(lambda: (shop.till.get("products", "milk") or {}).get("price") == 115,
                   "the admin's price on the till")
        assert js.errors() == []


@pytest.mark.parametrize(("edit", "expected"), [
    ((["products", "bread", "stock"], 5, "counter"), "a Counter"),
    ((["products", "bread", "price"], 2.5, "float"), "F64"),
    ((["products", "bread", "price"], "cheap", "immutable"), "products record 'bread'"),
    ((["products", "bread", "colour"], "red", "string"), "products record 'bread'"),
    ((["gadgets"], {"a": "b"}, "object"), "top level is fixed"),
])
def test_counters_and_wrongly_typed_values_are_refused_with_nothing_applied(
        shop: Shop, edit: tuple[list[str], object, str], expected: str) -> None:
    before = shop.office.get("products", "bread")
    with shop.client(shop.office, device(shop.office)) as js:
        js.change((["customers", "acme", "address"], "in the same change", "immutable"),
                  edit)
        assert expected in refused(js, expected)
    assert shop.office.get("products", "bread") == before
    assert (shop.office.get("customers", "acme") or {}).get("address") != \
        "in the same change"
    # The document is not poisoned: the till and a new client go on as before.
    api = shop.api(shop.office)
    assert api.call("PUT", "/api/master/customers/{id}", {"address": f"after {expected}"},
                    id="acme").status == 200
    with shop.client(shop.office) as js:
        js.wait(["customers", "acme", "address"], f"after {expected}")


def test_a_client_restarting_with_its_till_loses_nothing(shop: Shop) -> None:
    """The till's daemon stops while a client edits; when it is back (same port), the
    client's offline edit reaches the till and the other till, and what the till got
    meanwhile reaches the client."""
    port = ["--api-port", str(free_port())]
    shop.office.stop()
    shop.office.start([shop.till], extra=port)
    with shop.client(shop.office, device(shop.office)) as js:
        js.change((["customers", "before"], {"name": "Before"}, "object"))
        wait_until(lambda: shop.office.get("customers", "before") is not None,
                   "the first edit stored")
        shop.office.stop()
        js.change((["customers", "offline"], {"name": "Written offline"}, "object"))
        assert shop.api(shop.till).call("PUT", "/api/master/customers/{id}",
                                        {"name": "Meanwhile"}, id="meanwhile").status == 200
        shop.office.start([shop.till], extra=port)
        js.wait(["customers", "meanwhile", "name"], "Meanwhile")
        for till in (shop.office, shop.till):
            wait_until(lambda t=till: (t.get("customers", "offline") or {}).get("name")
                       == "Written offline", f"the offline edit on {till.name}")
        assert js.read()["customers"]["before"] == {"name": "Before"}


def test_a_websocket_without_the_token_or_with_a_wrong_one_is_refused(shop: Shop) -> None:
    base = shop.ws_url(shop.office).split("?")[0]
    assert refused_status(base) == "401"
    assert refused_status(base + "?token=wrong") == "401"
    assert refused_status(shop.ws_url(shop.office)) == "open"


def test_the_node_example_of_the_docs_runs_as_written(shop: Shop) -> None:
    """docs/automerge-repo.md's example, taken from the markdown as it stands, against a
    running till: it lists the products, its own edit reaches the tills, and a product
    put in Python meanwhile is listed live."""
    (snippet,) = blocks_under("## Example: list the products, live (Node)",
                              REPO / "docs" / "automerge-repo.md")
    api = shop.api(shop.office)
    args = [api.base, api.token, device(shop.office)]
    milk = shop.office.get("products", "milk")
    assert milk is not None
    with NodeScript("\n".join(snippet) + "\n", args, shop.root / "example.log") as js:
        js.wait_line(f"milk {milk['name']} {milk['price']}")
        for till in (shop.office, shop.till):
            wait_until(lambda t=till: (t.get("customers", "c-42") or {}).get("name")
                       == "Kiosk", f"the example's customer on {till.name}")
        assert api.call("PUT", "/api/master/products/{id}",
                        {"name": "Example", "sku": "EX", "price": 123},
                        id="example").status == 200
        js.wait_line("example Example 123")


TEXT_NAME = "Crème brûlée 🍮 x2"


async def read_as_strings(path: Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The product ``brulee`` by ``Till.get`` and by ``MasterData.fields``, in-process;
    its name is held as Automerge Text."""
    async with await Till.open(path, readonly=True) as till:
        doc = till.master._doc
        products = doc.get(am.ROOT, "products")
        assert products is not None
        record = doc.get(products[1], "brulee")
        assert record is not None
        name = doc.get(record[1], "name")
        assert name is not None and name[0] == am.ObjType.Text, name
        return (till.get("products", "brulee"),
                till.master.fields("products", "brulee", ("name", "sku", "price")))


def test_strings_a_node_client_writes_as_text_are_plain_strings_on_every_till(
        shop: Shop) -> None:
    """automerge-repo's default: a plain JS string is Automerge Text.  The till beside
    (over the LAN) and a fresh till (through the relay) read it as a string, in Python,
    from the command line and over the HTTP API."""
    expected = {"name": TEXT_NAME, "sku": "CB-1", "price": 450}
    with shop.client(shop.office, device(shop.office)) as js:
        js.change((["products", "brulee"], {"price": 450}, "object"),
                  (["products", "brulee", "name"], TEXT_NAME, "string"),
                  (["products", "brulee", "sku"], "CB-1", "string"))
        assert js.errors() == []
        wait_until(lambda: shop.till.get("products", "brulee") == expected,
                   "the product on the other till, over the LAN")
    newcomer = LanTill(shop.root / "text-newcomer", "Text newcomer")
    newcomer.init(shop.relay, STORE, role="till")
    wait_until(lambda: newcomer.sync(check=False) is not None and newcomer.get(
        "products", "brulee") == expected, "the product on a fresh till, through the relay")
    for till in (shop.till, newcomer):
        record, fields = asyncio.run(read_as_strings(till.path))
        assert record == expected and fields == expected, (till.name, record, fields)
    newcomer.start([], relay=False)
    try:
        for till in (shop.till, newcomer):
            api = shop.api(till)
            one = api.call("GET", "/api/master/products/{id}", id="brulee")
            assert one.status == 200 and one.body["record"] == expected, (till.name, one.body)
            listed = api.call("GET", "/api/master/products")
            assert listed.body["records"]["brulee"] == expected, till.name
    finally:
        newcomer.stop()

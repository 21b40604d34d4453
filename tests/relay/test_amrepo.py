"""automerge-repo clients (Node, tests/js) at the relay: ``/automerge?token=`` on the
relay's port, with a token of the store's reporting API; tills sync by the command line."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.js_clients import JsClient, refused_status
from tests.peer.lan_processes import wait_until
from tests.relay.processes import RelayProcess, TillDir, cli_json
from tillsync.peer.amrepo.protocol import document_url

STORE, OTHER = "shop-js", "shop-other"


class Setup:
    def __init__(self, root: Path, relay: RelayProcess) -> None:
        self.root, self.relay = root, relay
        self.office = TillDir(root / "office", "Office")
        self.till = TillDir(root / "till", "Till 1")
        self.office.init(relay, STORE)
        self.till.init(relay, STORE, role="till")
        self.office.put_many([("products", "tea", {"name": "Tea", "sku": "T", "price": 250})])
        self.office.sync()
        TillDir(root / "elsewhere", "Elsewhere").init(relay, OTHER)
        where = ["--data", str(relay.data), *(["--db", relay.db] if relay.db else [])]
        self.token = cli_json("relay", "token", *where, "--store", STORE)["token"]
        self.other_token = cli_json("relay", "token", *where, "--store", OTHER)["token"]
        self.clients = 0

    def url(self, token: str | None = None) -> str:
        return f"{self.relay.url}/automerge?token={self.token if token is None else token}"

    def client(self, till: TillDir | None = None) -> JsClient:
        self.clients += 1
        actor = None if till is None else \
            f"{uuid.UUID(till.status()['device_id']).hex}{self.clients:08x}"
        return JsClient(self.url(), document_url(STORE), self.root / f"node{self.clients}.log",
                        actor)


@pytest.fixture(scope="module")
def setup(relay: RelayProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    yield Setup(tmp_path_factory.mktemp("js"), relay)


def test_a_node_client_reads_the_store_and_edits_reach_tills_both_ways(setup: Setup) -> None:
    with setup.client(setup.till) as js:
        assert js.first["products"]["tea"]["price"] == 250
        js.change((["customers", "kiosk"], {"name": "Kiosk", "phone": "42"}, "object"))
        wait_until(lambda: setup.till.sync(check=False) is not None and (
            setup.till.master("customers").get("kiosk") or {}).get("name") == "Kiosk",
            "the Node client's customer on a till, through the relay")
        setup.office.put("products", "tea", {"price": 260})
        setup.office.sync()
        js.wait(["products", "tea", "price"], 260)


def test_a_till_role_price_edit_and_a_counter_are_refused_at_the_relay(setup: Setup) -> None:
    for edit, expected in (((["products", "tea", "price"], 1, "int"), "role till"),
                           ((["products", "tea", "sold"], 3, "counter"), "a Counter")):
        with setup.client(setup.till) as js:
            js.change((["products", "tea", "sku"], "T-2", "immutable"), edit)
            errors = wait_until(js.errors, f"an error frame ({expected})")
            assert expected in errors[0], errors
    setup.office.sync()
    assert setup.office.master("products")["tea"]["sku"] == "T"  # nothing of either change
    assert setup.office.master("products")["tea"]["price"] in (250, 260)
    assert setup.relay.wait_log("document changes refused")


def test_the_relay_refuses_a_missing_or_wrong_token(setup: Setup) -> None:
    base = setup.url().split("?")[0]
    assert refused_status(base) == "401"
    assert refused_status(setup.url("wrong")) == "401"
    assert refused_status(setup.url()) == "open"
    assert refused_status(setup.url(setup.other_token)) == "open"  # for its own store

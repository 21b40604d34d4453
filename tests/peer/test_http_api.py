"""The till's HTTP API against real ``peer run`` daemons (loopback only): a relay, an
admin till and a till-role till linked on the LAN.  Every answer is checked against the
OpenAPI document the daemon serves (``tests.peer.http_client``)."""

from __future__ import annotations

import hashlib
import os
import stat
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.peer.http_client import Api, Events
from tests.peer.lan_processes import LanTill, linked, office_and_till, wait_until
from tests.relay.processes import RelayProcess, run_cli

STORE = "shop-api"
SHIFT = "6b0e7c1e-2f5d-4a35-9c61-0d6f1e2a3b4c"
MASTER = [("products", "bread", {"name": "Bread", "sku": "B1", "price": 320,
                                 "reorder_level": 5}),
          ("products", "milk", {"name": "Milk", "sku": "M1", "price": 110}),
          ("customers", "acme", {"name": "ACME"}),
          ("cashiers", "ann", {"name": "Ann", "role": "cashier", "pin": "1234"}),
          ("settings", "store", {"store_name": "Corner Shop", "receipt_header": "Main St 1",
                                 "receipt_footer": "Thank you", "currency": "EUR"})]

COLLECTION, RECORD = "/api/master/{collection}", "/api/master/{collection}/{id}"
ENTRY, BALANCE = "/api/entries/{client_id}", "/api/balances/{customer_id}"
TICKET, INVOICE = "/api/tickets/{ticket}", "/api/invoices/{ticket}"


def sale(price: int = 320, **extra: Any) -> dict[str, Any]:
    return {"lines": [{"product_id": "bread", "qty": 1, "unit_price": price}],
            "payments": [{"method": "cash", "amount": price}], "shift_client_id": SHIFT,
            **extra}


class Shop:
    def __init__(self, relay: RelayProcess, office: LanTill, till: LanTill) -> None:
        self.relay, self.office, self.till = relay, office, till
        self.api = Api.of(office.path)
        self.till_api = Api.of(till.path)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    root = tmp_path_factory.mktemp("api")
    with office_and_till(root, STORE, MASTER) as (relay, office, till):
        office.record("shift_open", {"cashier_id": "ann", "opening_cash": 1000}, SHIFT)
        office.sync()
        till.sync()
        with linked(office, till):
            yield Shop(relay, office, till)


def test_the_owner_token_is_owner_only_and_the_api_refuses_requests_without_it(
        shop: Shop) -> None:
    mode = stat.S_IMODE((shop.office.path / "api.token").stat().st_mode)
    assert mode == 0o600
    printed = run_cli("peer", "token", str(shop.office.path)).stdout.strip()
    assert printed == shop.api.token
    before = shop.office.status()["last_seq"]
    for token in (None, "wrong", ""):
        answer = shop.api.with_token(token).call("POST", "/api/entries",
                                                 {"kind": "sale", "body": sale()})
        assert answer.status == 401
        assert answer.body["error"]["code"] == "unauthorized"
    assert shop.api.with_token(None).call("GET", "/api/stock").status == 401
    assert shop.office.status()["last_seq"] == before  # nothing stored


def test_unknown_routes_and_the_event_stream_answer_in_the_error_shape(shop: Shop) -> None:
    for api in (shop.api, shop.api.with_token(None)):
        lost = api.call("GET", "/api/nothing-here")
        assert lost.status in (401, 404) and set(lost.body["error"]) == {
            "code", "message", "details"}
    assert shop.api.with_token("wrong").call("GET", "/api/events").status == 401


def test_issued_tokens_work_until_revoked(shop: Shop) -> None:
    path = str(shop.office.path)
    token = run_cli("peer", "token", path, "--issue", "handheld").stdout.strip()
    handheld = shop.api.with_token(token)
    assert handheld.call("GET", "/api/stock").status == 200
    assert "handheld" in run_cli("peer", "token", path, "--list").stdout
    run_cli("peer", "token", path, "--revoke", "handheld")
    assert handheld.call("GET", "/api/stock").status == 401
    refused = run_cli("peer", "token", path, "--revoke", "handheld", check=False)
    assert refused.returncode == 2 and "no token named" in refused.stderr


def test_master_data_reads_all_one_and_unknown(shop: Shop) -> None:
    api = shop.api
    products = api.call("GET", COLLECTION, collection="products").body
    assert products["full"] and {"bread", "milk"} <= products["records"].keys()
    assert products["records"]["bread"]["price"] == 320
    one = api.call("GET", RECORD, collection="products", id="bread")
    assert one.status == 200 and one.body["record"]["name"] == "Bread"
    assert api.call("GET", RECORD, collection="products", id="nope").status == 404
    missing = api.call("GET", COLLECTION, collection="planets")
    assert missing.status == 404 and missing.body["error"]["code"] == "unknown_collection"
    cashiers = api.call("GET", COLLECTION, collection="cashiers").body["records"]
    assert "pin_hash" not in cashiers["ann"]


def test_delta_read_after_a_put_here_and_after_a_change_from_another_till(
        shop: Shop) -> None:
    api, other = shop.api, shop.till_api
    cursor = api.call("GET", COLLECTION, collection="products").body["sync_cursor"]
    other_cursor = other.call("GET", COLLECTION, collection="products").body["sync_cursor"]
    empty = api.call("GET", COLLECTION, collection="products", query=f"since={cursor}").body
    assert empty == {"records": {}, "deleted_ids": [], "sync_cursor": cursor, "full": False}

    put = api.call("PUT", RECORD, {"price": 340, "reorder_level": None}, collection="products",
                   id="bread")
    assert put.status == 200 and put.body["record"]["price"] == 340
    assert "reorder_level" not in put.body["record"]
    api.call("PUT", RECORD, {"name": "Eggs", "sku": "E1", "price": 250},
             collection="products", id="eggs")
    delta = api.call("GET", COLLECTION, collection="products", query=f"since={cursor}").body
    assert set(delta["records"]) == {"bread", "eggs"} and delta["sync_cursor"] != cursor
    assert delta["records"]["bread"]["price"] == 340
    customers = api.call("GET", COLLECTION, collection="customers", query=f"since={cursor}")
    assert customers.body["records"] == {}

    # The other till gets the edits over the LAN; its delta read shows them.
    def arrived() -> dict[str, Any] | None:
        body = other.call("GET", COLLECTION, collection="products",
                          query=f"since={other_cursor}").body
        return body if {"bread", "eggs"} <= body["records"].keys() else None

    got = wait_until(arrived, "the edits to reach the other till")
    assert got["records"]["eggs"]["name"] == "Eggs"

    bad = api.call("GET", COLLECTION, collection="products", query="since=xyz")
    assert bad.status == 400 and bad.body["error"]["details"][0]["path"] == "since"
    unknown = api.call("GET", COLLECTION, collection="products", query="since=" + "ab" * 32)
    assert unknown.status == 410 and unknown.body["error"]["code"] == "unknown_cursor"


def test_master_writes_follow_the_role_rule_and_validate(shop: Shop) -> None:
    refused = shop.till_api.call("PUT", RECORD, {"price": 1}, collection="products",
                                 id="milk")
    assert refused.status == 403 and refused.body["error"]["code"] == "forbidden"
    ok = shop.till_api.call("PUT", RECORD, {"name": "ACME Ltd"},
                            collection="customers", id="acme")
    assert ok.status == 200
    invalid = shop.api.call("PUT", RECORD, {"price": "dear", "sku": 5},
                            collection="products", id="milk")
    assert invalid.status == 422
    paths = {d["path"] for d in invalid.body["error"]["details"]}
    assert {"record.price", "record.sku"} <= paths, paths
    assert shop.api.call("PUT", RECORD, raw=b"{nope", collection="products",
                         id="milk").status == 400


def test_deletes_follow_the_role_rule_and_leave_every_read(shop: Shop) -> None:
    api, till_api = shop.api, shop.till_api
    assert api.call("PUT", RECORD, {"name": "Scones", "sku": "S1", "price": 90},
                    collection="products", id="scones").status == 200
    assert api.call("PUT", RECORD, {"name": "Old Co"}, collection="customers",
                    id="oldco").status == 200
    wait_until(lambda: till_api.call("GET", RECORD, collection="products",
                                     id="scones").status == 200, "scones on the other till")
    refused = till_api.call("DELETE", RECORD, collection="products", id="scones")
    assert refused.status == 403 and refused.body["error"]["code"] == "forbidden"
    wait_until(lambda: till_api.call("GET", RECORD, collection="customers",
                                     id="oldco").status == 200, "oldco on the other till")
    gone = till_api.call("DELETE", RECORD, collection="customers", id="oldco")
    assert gone.status == 200 and gone.body == {"id": "oldco", "deleted": True}
    assert api.call("DELETE", RECORD, collection="products", id="scones").status == 200
    assert api.call("GET", RECORD, collection="products", id="scones").status == 404
    assert "scones" not in api.call("GET", COLLECTION, collection="products").body["records"]
    again = api.call("DELETE", RECORD, collection="products", id="scones")
    assert again.status == 404 and again.body["error"]["code"] == "not_found"
    settings = api.call("DELETE", RECORD, collection="settings", id="store")
    assert settings.status == 422 and "cannot be deleted" in settings.body["error"]["message"]
    wait_until(lambda: api.call("GET", RECORD, collection="customers",
                                id="oldco").status == 404, "the delete to come back")


def test_recording_with_a_client_id_replays_and_conflicts(shop: Shop) -> None:
    api = shop.api
    key = str(uuid.uuid4())
    first = api.call("POST", "/api/entries", {"kind": "sale", "body": sale(),
                                              "client_id": key})
    assert first.status == 201 and first.body["replay"] is False
    assert first.body["provisional"] is True and first.body["invoice"] is None
    assert first.body["ticket"] == first.body["entry"]["ticket"]
    assert "sync" in first.body["note"]
    again = api.call("POST", "/api/entries", {"kind": "sale", "body": sale(),
                                              "client_id": key.upper()})
    assert again.status == 200 and again.body["replay"] is True
    assert again.body["entry"] == first.body["entry"]
    other = api.call("POST", "/api/entries", {"kind": "sale", "body": sale(price=999),
                                              "client_id": key})
    assert other.status == 409 and other.body["error"]["code"] == "client_id_conflict"
    fresh = api.call("POST", "/api/entries", {"kind": "sale", "body": sale()})
    assert fresh.status == 201 and fresh.body["entry"]["client_id"] != key
    found = api.call("GET", ENTRY, client_id=key)
    assert found.status == 200 and found.body["entry"]["seq"] == first.body["entry"]["seq"]
    assert api.call("GET", ENTRY, client_id=str(uuid.uuid4())).status == 404


def test_bad_entries_are_refused_with_every_violation_and_its_path(shop: Shop) -> None:
    api = shop.api
    before = shop.office.status()["last_seq"]
    bad_json = api.call("POST", "/api/entries", raw=b'{"kind": ')
    assert bad_json.status == 400 and bad_json.body["error"]["code"] == "bad_json"
    not_object = api.call("POST", "/api/entries", [1, 2])
    assert not_object.status == 400
    unknown = api.call("POST", "/api/entries", {"kind": "teleport", "body": {}})
    assert unknown.status == 400 and unknown.body["error"]["code"] == "unknown_kind"
    shape = api.call("POST", "/api/entries", {"kind": 5, "client_id": "not-a-uuid"})
    assert shape.status == 422
    assert {d["path"] for d in shape.body["error"]["details"]} == {"kind", "body",
                                                                   "client_id"}
    broken = {"lines": [{"product_id": "bread", "qty": 0, "unit_price": -1}],
              "payments": [], "shift_client_id": SHIFT}
    violation = api.call("POST", "/api/entries", {"kind": "sale", "body": broken})
    assert violation.status == 422
    assert violation.body["error"]["code"] == "schema_violation"
    paths = {d["path"] for d in violation.body["error"]["details"]}
    assert {"body.lines[0].qty", "body.lines[0].unit_price", "body.payments"} <= paths, paths
    ghost = api.call("POST", "/api/entries", {"kind": "sale", "body": sale(
        customer_id="nobody")})
    assert ghost.status == 422
    huge = api.call("POST", "/api/entries", {"kind": "shift_open", "body": {
        "cashier_id": "ann", "opening_cash": 10**30}})
    assert huge.status == 422 and huge.body["error"]["code"] == "schema_violation"
    assert [d["path"] for d in huge.body["error"]["details"]] == ["body.opening_cash"]
    oversized = api.call("POST", "/api/entries", raw=b'{"kind": "' + b"x" * (5 << 20)
                         + b'"}')
    assert oversized.status == 413 and oversized.body["error"]["code"] == "too_large"
    assert shop.office.status()["last_seq"] == before  # nothing stored


def test_views_stock_shifts_held_sales_balances(shop: Shop) -> None:
    api = shop.api
    held = str(uuid.uuid4())
    assert api.call("POST", "/api/entries", {"kind": "held_sale", "client_id": held, "body": {
        "lines": [{"product_id": "milk", "qty": 2, "unit_price": 110}],
        "shift_client_id": SHIFT}}).status == 201
    assert held in api.call("GET", "/api/held-sales").body["held_sales"]
    on_account = {"lines": [{"product_id": "milk", "qty": 1, "unit_price": 110}],
                  "payments": [{"method": "account", "amount": 110}],
                  "shift_client_id": SHIFT, "customer_id": "acme"}
    assert api.call("POST", "/api/entries", {"kind": "sale", "body": on_account}).status == 201
    stock = {r["product_id"]: r for r in api.call("GET", "/api/stock").body["stock"]}
    assert stock["milk"]["qty"] == "-1"
    shifts = api.call("GET", "/api/shifts", query="open=true").body["shifts"]
    assert [s["shift_client_id"] for s in shifts] == [SHIFT]
    assert shifts[0]["expected_cash"] >= 1000
    assert api.call("GET", "/api/balances").body["balances"]["acme"] == 110
    assert api.call("GET", BALANCE, customer_id="acme").body["balance"] == 110
    assert api.call("GET", BALANCE, customer_id="nobody").status == 404


def test_a_sale_gets_its_invoice_number_live_and_prints(shop: Shop) -> None:
    api = shop.api
    events = Events(api)
    try:
        recorded = api.call("POST", "/api/entries", {"kind": "sale", "body": sale()}).body
        ticket = recorded["ticket"]
        wait_until(lambda: any(e["ticket"] == ticket and e["invoice"]
                               for e in events.of("receipt")), "a receipt event")
        wait_until(lambda: any(e["client_id"] == recorded["entry"]["client_id"]
                               for e in events.of("entry")), "an entry event")
        wait_until(lambda: events.of("sync"), "a sync event")
        # A master-data edit made at the other till reaches this one over the LAN.
        assert shop.till_api.call("PUT", RECORD, {"name": "ACME Corp"}, collection="customers",
                                  id="acme").status == 200
        wait_until(lambda: any(e["collection"] == "customers" and "acme" in e["changed"]
                               for e in events.of("master")), "a master event from the LAN")
    finally:
        events.close()
    one = api.call("GET", TICKET, ticket=ticket).body
    assert one["status"] == "accepted" and one["invoice"].startswith(one["receipt"]["series"])
    history = api.call("GET", "/api/tickets", query="limit=500").body["tickets"]
    assert ticket in [t["ticket"] for t in history]
    stamp = recorded["entry"]["client_created_at"]
    window = api.call("GET", "/api/tickets", query=f"from={stamp}&limit=1").body["tickets"]
    assert len(window) == 1
    assert api.call("GET", "/api/tickets", query="from=yesterday").status == 400
    assert api.call("GET", "/api/tickets", query="limit=0").status == 400
    printable = api.call("GET", INVOICE, ticket=ticket).body
    assert printable["official"] and printable["invoice"] == one["invoice"]
    assert printable["header"]["store_name"] == "Corner Shop"
    assert printable["footer"] == "Thank you" and printable["total"] == 320
    text = api.call("GET", INVOICE, ticket=ticket, query="format=text")
    assert text.content_type == "text/plain" and one["invoice"] in text.body
    assert all(len(line) <= 42 for line in text.body.splitlines())
    same = api.call("GET", "/api/invoices/{ticket}/text", ticket=ticket).body
    assert same == text.body and "Corner Shop" in same and "TOTAL EUR" in same
    assert api.call("GET", INVOICE, ticket="NOPE-1").status == 404
    assert api.call("GET", INVOICE, ticket=ticket, query="format=pdf").status == 400


def test_sync_status_and_manual_controls(shop: Shop) -> None:
    api = shop.api
    status = api.call("GET", "/api/sync").body
    assert status["relay"] == shop.relay.url
    wait_until(lambda: [p for p in api.call("GET", "/api/sync").body["peers"]
                        if p["connected"]], "the LAN peer in the sync status")
    pushed = api.call("POST", "/api/sync/push").body
    assert pushed["pending"] == 0 and pushed["verified"]
    assert api.call("POST", "/api/sync/pull").status == 200
    held = api.call("GET", "/api/sync").body["receipts_position"]
    full = api.call("POST", "/api/sync/resync").body
    assert full["full"] and full["verified"] and full["lost"] == []
    assert full["receipts"] >= held and full["receipts_position"] >= held


FILES, FILE = "/api/files", "/api/files/{sha256}"


def test_files_are_uploaded_listed_served_and_reach_the_lan_peer_and_relay(
        shop: Shop) -> None:
    api, png = shop.api, b"\x89PNG\r\n\x1a\n" + os.urandom(3000)
    sha = hashlib.sha256(png).hexdigest()
    ref = {"sha256": sha, "size": len(png), "media_type": "image/png"}
    uploaded = api.call("POST", FILES, raw=png, content_type="image/png")
    assert (uploaded.status, uploaded.body) == (201, {"file": ref, "new": True})
    again = api.call("POST", FILES, raw=png, content_type="application/octet-stream")
    assert (again.status, again.body) == (200, {"file": ref, "new": False})
    # Refused, nothing stored: bytes of no known type, a type the bytes do not show.
    for raw, given, status in ((b"just text", "application/octet-stream", 415),
                               (png + b"x", "image/jpeg", 422), (b"", "image/png", 422)):
        refused = api.call("POST", FILES, raw=raw, content_type=given)
        assert refused.status == status and refused.body["error"]["code"] == "bad_file"
    listing = api.call("GET", FILES).body["files"]
    assert [row for row in listing if row["sha256"] == sha] == [{**ref, "at_relay": False}]
    assert len(listing) == len({row["sha256"] for row in listing})
    assert hashlib.sha256(png + b"x").hexdigest() not in {row["sha256"] for row in listing}

    served = api.call("GET", FILE, sha256=sha)
    assert (served.status, served.body, served.content_type) == (200, png, "image/png")
    assert api.call("GET", FILE, sha256="Z" * 64).body["error"]["code"] == "bad_hash"
    assert api.call("GET", FILE, sha256="0" * 64).status == 404
    assert api.with_token(None).call("GET", FILE, sha256=sha).status == 401
    assert api.with_token(None).call("GET", FILES).status == 401

    # Named by a product, it goes to the other till on the LAN and up to the relay.
    api.call("PUT", RECORD, {"name": "Jam", "sku": "J1", "price": 450, "image": ref},
             collection="products", id="jam")
    wait_until(lambda: shop.till_api.call("GET", FILE, sha256=sha).body == png,
               "the image on the other till")
    assert api.call("POST", "/api/sync/push").body["errors"] == []
    rows = {row["sha256"]: row for row in api.call("GET", FILES).body["files"]}
    assert rows[sha]["at_relay"] is True


def test_a_manual_round_without_the_relay_is_a_502_naming_why(shop: Shop) -> None:
    shop.relay.kill()
    try:
        failed = shop.api.call("POST", "/api/sync/push")
        assert failed.status == 502 and failed.body["error"]["code"] == "unreachable"
        assert "cannot sync with the relay" in failed.body["error"]["message"]
        assert shop.api.call("GET", "/api/sync").body["last_error"]
    finally:
        shop.relay.start()


def test_the_cli_writes_through_the_api_while_the_daemon_runs(shop: Shop) -> None:
    entry = shop.office.record("sale", sale())
    assert entry["ticket"]
    found = shop.api.call("GET", ENTRY, client_id=entry["client_id"])
    assert found.status == 200
    shop.office.put("products", "milk", {"price": 120})
    assert shop.api.call("GET", RECORD, collection="products",
                         id="milk").body["record"]["price"] == 120
    refused = run_cli("peer", "record", str(shop.office.path), "sale", "--body",
                      '{"lines": []}', check=False)
    assert refused.returncode == 2 and "body.lines" in refused.stderr


def test_the_reference_page_shows_products_prices_sync_state_and_tickets(shop: Shop) -> None:
    from tests.relay.test_dashboard import chromium

    page = shop.api.call("GET", "/")
    assert page.status == 200 and "till.js" in page.body
    for name in ("till.js", "till.css"):
        text = shop.api.with_token(None).call("GET", "/static/" + name).body
        assert "http://" not in text and "https://" not in text  # nothing from a CDN
    ticket = shop.api.call("POST", "/api/entries", {"kind": "sale", "body": sale()}).body
    dom = chromium("--dump-dom", f"{shop.api.base}/#token={shop.api.token}").stdout
    price = shop.api.call("GET", RECORD, collection="products", id="bread").body["record"]
    shown = f"Bread<span>{price['price'] // 100}.{price['price'] % 100:02d}</span>"
    assert 'data-product="bread"' in dom and shown in dom, dom[-3000:]
    assert ticket["ticket"] in dom  # the ticket history
    assert "last contact" in dom and "Reprint" in dom


def test_the_event_stream_says_when_a_lan_peer_leaves_and_comes_back(shop: Shop) -> None:
    # The daemon's status loop writes lan.json and tells the bus in one step: once the
    # file shows the link, the bus has seen it too (a link made and lost between two
    # looks of the loop is no event).
    wait_until(lambda: [p for p in shop.office.lan()["peers"] if p["connected"]],
               "the office's LAN link")
    events = Events(shop.api)
    try:
        shop.till.stop()

        def seen(connected: bool) -> bool:  # the office has one LAN peer: this till
            return any(e["connected"] is connected for e in events.of("peer"))

        wait_until(lambda: seen(False), "a peer-left event")
        shop.till.start([shop.office])
        shop.till_api = Api.of(shop.till.path)
        wait_until(lambda: seen(True), "a peer-joined event")
    finally:
        events.close()


def test_the_automerge_document_is_named_alike_on_every_till(shop: Shop) -> None:
    from tillsync.peer.amrepo.protocol import document_url

    answers = [api.call("GET", "/api/automerge").body for api in (shop.api, shop.till_api)]
    assert answers[0] == answers[1]
    assert answers[0]["url"] == document_url(STORE) and answers[0]["path"] == "/automerge"
def test_a_daemon_without_the_lan_serves_the_api_and_syncs(shop: Shop) -> None:
    """``peer run --no-lan``: no LAN listener, but the HTTP API is served, the CLI writes
    through it while the daemon holds the store, and the relay loop carries it up."""
    till = LanTill(shop.office.path.parent / "till3", "Till 3")
    till.init(shop.relay, STORE, role="till")
    till.sync()
    till.start([], lan=False)
    try:
        api = Api.of(till.path)
        shift = str(uuid.uuid4())
        till.record("shift_open", {"cashier_id": "ann", "opening_cash": 0}, shift)
        found = api.call("GET", ENTRY, client_id=shift)
        assert found.status == 200 and found.body["entry"]["kind"] == "shift_open"
        wait_until(lambda: api.call("GET", "/api/sync").body["pending"] == 0,
                   "the relay loop to carry the shift up")
        assert "listening for LAN peers" not in till.log()
    finally:
        till.stop()


def test_every_route_is_in_the_openapi_document_and_was_checked(shop: Shop) -> None:
    """The module's tests together called every documented route (run the module whole:
    alone, this test sees only its own calls)."""
    documented = {(m.upper(), p) for p, ops in shop.api.document["paths"].items()
                  for m in ops}
    answered = {(m, p) for m, p, _ in shop.api.checked} | {("GET", "/api/events")}
    assert documented <= answered, documented - answered


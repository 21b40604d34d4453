"""Tills sync with each other on the LAN while the relay is down (real processes).

Three tills of one store, each with its ``peer run`` daemon listening on its own
loopback port and linked to the others by the static list; the relay is killed before
the daemons start, so everything they learn from each other crosses the LAN links.
"""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

import pytest

from tests.peer.lan_processes import LanTill, assert_no_traceback, wait_until
from tests.relay.processes import Relays, invoices, rogue_put, run_cli

STORE = "shop-lan"
BREAD = ("products", "bread", {"name": "Bread", "sku": "B1", "price": 320,
                               "reorder_level": 5})
CASHIER = ("cashiers", "ann", {"name": "Ann", "role": "cashier", "pin": "1234"})


def sale(shift: str, price: int = 320) -> dict[str, object]:
    return {"lines": [{"product_id": "bread", "qty": 1, "unit_price": price}],
            "payments": [{"method": "cash", "amount": price}], "shift_client_id": shift}


def stock_of(till: LanTill) -> str:
    from tests.relay.processes import cli_json

    rows = cli_json("peer", "stock", str(till.path))
    return str(next(r["qty"] for r in rows if r["product_id"] == "bread"))


@pytest.mark.slow
def test_three_tills_keep_in_step_on_the_lan_and_one_carries_everything_to_the_relay(
    tmp_path: Path,
) -> None:
    with Relays(tmp_path) as relays:
        relay = relays.start()
        tills = [LanTill(tmp_path / f"till{i}", f"Till {i}") for i in (1, 2, 3)]
        for till in tills:
            till.init(relay, STORE)
        tills[0].put_many([BREAD, CASHIER])
        for till in tills:  # master data out, certificates in
            till.sync()
        relay.kill()  # the shop's internet is down from here on

        one, two, three = tills
        try:
            one.start([], relay=True)
            two.start([one], relay=False)
            three.start([one, two], relay=False)
            wait_until(lambda: all(sum(p["connected"] for p in t.lan()["peers"]) == 2
                                   for t in tills), "every till to link with the other two")

            # A price edit on one till reaches the others, relay down.
            two.put("products", "bread", {"price": 350})
            for till in (one, three):
                wait_until(lambda t=till: (t.get("products", "bread") or {}).get("price") == 350,
                           f"the new price on {till.name}")

            # Sales on every till reach every till: entries and derived stock.
            shifts = {t.name: str(uuid.uuid4()) for t in tills}
            sold: dict[str, list[str]] = {}
            for till in tills:
                till.record("shift_open", {"cashier_id": "ann", "opening_cash": 0},
                            shifts[till.name])
                sold[till.name] = [till.record("sale", sale(shifts[till.name], 350))
                                   ["client_id"] for _ in range(3)]
            for till in tills:
                wait_until(lambda t=till: sorted(d["last_seq"] for d in
                                                 t.status()["devices"].values()) == [4, 4, 4],
                           f"{till.name} to hold the 12 entries of all three tills")
                assert stock_of(till) == "-9"
                assert till.status()["pending"] == 12

            # The till that can reach the relay carries everyone's entries up; the receipts
            # come back down over the LAN to the tills that cannot.
            relay.start()
            for till in tills:
                wait_until(lambda t=till: t.status()["pending"] == 0,
                           f"every entry acknowledged on {till.name}", timeout=60)
            all_sales = [c for cs in sold.values() for c in cs]
            numbered = invoices(relay, STORE)
            assert sorted(n for _, n, *_ in numbered) == list(range(1, 10))
            assert sorted(row[2] for row in numbered) == sorted(all_sales)
            for till in tills:
                mine = {r["client_id"]: r for r in till.receipts(mine=True)}
                assert {c: mine[c]["status"] for c in sold[till.name]} == \
                    dict.fromkeys(sold[till.name], "accepted")
                assert all(mine[c]["invoice_no"] >= 1 for c in sold[till.name])

            # A till killed mid-stream catches up when it comes back.
            three.kill()
            more = [one.record("sale", sale(shifts[one.name], 350))["client_id"],
                    two.record("sale", sale(shifts[two.name], 350))["client_id"]]
            three.start([one, two], relay=False)
            wait_until(lambda: {r["client_id"] for r in three.receipts()
                                if r["status"] == "accepted"} >= set(more),
                       "the restarted till to learn the new sales' invoice numbers")
            assert stock_of(three) == "-11"
        finally:
            for till in tills:
                till.stop()
        assert_no_traceback(tills)


@pytest.mark.slow
def test_tills_find_each_other_by_mdns_and_ignore_another_store(tmp_path: Path) -> None:
    """No static list: the two tills of one store find each other by mDNS (announced
    on loopback), link, and sync; a till of another store on the same network is
    announced too, but never linked."""
    with Relays(tmp_path) as relays:
        relay = relays.start()
        one, two = LanTill(tmp_path / "one", "Till 1"), LanTill(tmp_path / "two", "Till 2")
        stranger = LanTill(tmp_path / "stranger", "Other shop")
        for till in (one, two):
            till.init(relay, STORE)
        stranger.init(relay, "another-shop")
        one.put_many([BREAD, CASHIER])
        for till in (one, two, stranger):
            till.sync()
        relay.kill()
        tills = (one, two, stranger)
        try:
            for till in tills:
                till.start([], relay=False, mdns=True)
            wait_until(lambda: [p["name"] for p in one.lan()["peers"] if p["connected"]]
                       == ["Till 2"], "till 1 and till 2 to find each other by mDNS")
            two.put("products", "bread", {"price": 333})
            wait_until(lambda: (one.get("products", "bread") or {}).get("price") == 333,
                       "the edit over the mDNS-found link")
            assert stranger.lan()["peers"] == []
            assert [p["name"] for p in two.lan()["peers"]] == ["Till 1"]
        finally:
            for till in tills:
                till.stop()
        for till in tills:
            assert "mDNS discovery is off" not in till.log()


@pytest.mark.slow
def test_a_till_role_devices_price_change_is_refused_on_the_lan_as_at_the_relay(
    tmp_path: Path,
) -> None:
    """Only a back-office or admin device may change prices (issue 4).  A till-role
    device refuses the edit itself, so it stays in document sync with everyone; and if
    a rogue build makes the change anyway, every LAN peer refuses it, relay down, as
    the relay would, while the others go on syncing among themselves."""
    with Relays(tmp_path) as relays:
        relay = relays.start()
        office = LanTill(tmp_path / "office", "Back office")
        counter = LanTill(tmp_path / "counter", "Counter till")
        other = LanTill(tmp_path / "other", "Admin till")
        office.init(relay, STORE, role="admin")
        counter.init(relay, STORE, role="till")
        other.init(relay, STORE, role="admin")
        office.put_many([BREAD, CASHIER])
        tills = (office, counter, other)
        for till in tills:
            till.sync()
        relay.kill()
        try:
            office.start([], relay=False)
            counter.start([office], relay=False)
            other.start([office, counter], relay=False)
            wait_until(lambda: all(sum(p["connected"] for p in t.lan()["peers"]) == 2
                                   for t in tills), "every till to link with the other two")

            refused = run_cli("peer", "put", str(counter.path), "products", "bread",
                              "--body", '{"price": 1}', check=False)
            assert refused.returncode == 2, refused
            assert "may be changed only from a back-office or admin device" in refused.stderr
            assert "nothing was stored" in refused.stderr
            assert (counter.get("products", "bread") or {})["price"] == 320
            counter.put("products", "bread", {"name": "Bread, white"})  # a name: allowed

            # The back office's price reaches every till, the counter too: it never made
            # a change the others refuse, so its document sync goes on.
            office.put("products", "bread", {"price": 340})
            for till in (counter, other):
                wait_until(lambda t=till: (t.get("products", "bread") or {}).get("price")
                           == 340, f"the back office's price on {till.name}")
            wait_until(lambda: (office.get("products", "bread") or {}).get("name")
                       == "Bread, white", "the counter's new name on the back office")

            # A rogue build on the counter makes the change anyway: refused by every peer.
            counter.stop()
            rogue_put(counter.path, [("products", "bread", {"price": 1})])
            counter.start([office], relay=False)
            for till in (office, other):
                wait_until(lambda t=till: "document changes refused" in t.log(),
                           f"{till.name} to refuse the counter's price change")
                assert "the price of product 'bread'" in till.log()
                assert (till.get("products", "bread") or {})["price"] == 340
        finally:
            for till in tills:
                till.stop()


def test_a_till_away_from_the_relay_longer_than_its_certificate_is_refused_on_the_lan(
    tmp_path: Path,
) -> None:
    """A certificate is valid `relay serve --cert-days` (default 90) from the till's last
    contact with the relay: a till that stayed away longer (a stolen one, or one left in
    a drawer) is refused by the others on the LAN, and linked again once it has synced."""
    with Relays(tmp_path) as relays:
        relay = relays.start(extra=["--cert-days", str(3 / 86400)])  # three seconds
        away = LanTill(tmp_path / "away", "Away till")
        away.init(relay, STORE)
        expires = time.monotonic() + 3
        relay.kill()
        relay.extra = []  # from now on the default: 90 days
        relay.start()
        home = LanTill(tmp_path / "home", "Home till")
        home.init(relay, STORE)
        home.put_many([BREAD, CASHIER])
        home.sync()
        relay.kill()
        time.sleep(max(0.0, expires + 1 - time.monotonic()))
        try:
            home.start([], relay=False)
            away.start([home], relay=False)
            refusal = wait_until(lambda: re.search(r".*Away till.*expired on.*", home.log()),
                                 "the home till to refuse the away till's certificate")
            assert "sync with the relay" in refusal.group(0), refusal.group(0)
            assert not any(p["connected"] for p in home.lan()["peers"])
            assert away.get("products", "bread") is None  # nothing crossed

            away.stop()
            relay.start()
            away.sync()  # a new certificate, valid 90 days
            relay.kill()
            away.start([home], relay=False)
            home.put("products", "bread", {"price": 350})  # reaches it over the LAN only
            wait_until(lambda: (away.get("products", "bread") or {}).get("price") == 350,
                       "the home till's new price on the away till, linked again")
        finally:
            for till in (home, away):
                till.stop()

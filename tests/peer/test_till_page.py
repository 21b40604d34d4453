"""The reference till page driven in real headless Chromium, as a cashier would: a relay,
a back office and a till (real ``peer run`` daemons linked on the LAN, loopback only).

With the relay down the cashier sells from the page and gets provisional tickets; a price
changed at the back office reaches the page over the LAN without a reload; when the relay
is back the page shows the official invoice numbers and a reprint prints one.

Set TILLSYNC_TILL_PAGE_SCREENSHOT=docs/till-page.png to keep the screenshot (the docs').
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from tests.browser import Browser, Page
from tests.peer.http_client import Api
from tests.peer.lan_processes import LanTill, linked, wait_until
from tests.peer.test_http_api import MASTER
from tests.relay.processes import RelayProcess, Relays

STORE = "shop-page"
SHIFT = "0d3c5a7e-8b1f-4c2d-9e6a-7f4b3c2d1e0a"
WAIT = 120.0  # seconds: generous, the machine may be busy; never a measure of speed
HISTORY = ("Object.fromEntries([...document.querySelectorAll('#tickets tr')]"
           ".map((r) => [r.cells[0].textContent, r.cells[1].textContent]))")
SYNC = ("Object.fromEntries([...document.querySelectorAll('#sync-state dt')]"
        ".map((d) => [d.textContent, d.nextElementSibling.textContent]))")


class Shop:
    def __init__(self, relay: RelayProcess, office: LanTill, till: LanTill) -> None:
        self.relay, self.office, self.till = relay, office, till


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[Shop]:
    with Relays(tmp_path, None) as relays:
        relay = relays.start()
        office, till = LanTill(tmp_path / "office", "Office"), LanTill(tmp_path / "till", "Till 1")
        office.init(relay, STORE)
        till.init(relay, STORE, role="till")
        office.put_many(cast(list[tuple[str, str, dict[str, Any]]], MASTER))
        office.sync()
        till.sync()
        till.record("shift_open", {"cashier_id": "ann", "opening_cash": 1000}, SHIFT)
        till.sync()  # the shift is at the relay: what the page sells is all that is pending
        with linked(office, till):
            yield Shop(relay, office, till)


def open_page(browser: Browser, till: LanTill) -> Page:
    """The till's page, opened with its owner's token in the fragment."""
    api = Api.of(till.path)
    page = browser.page()
    page.navigate(f"{api.base}/#token={api.token}")
    page.wait_for("document.querySelector('#live').textContent === 'live'",
                  "the page's live event stream", WAIT)
    page.wait_for("document.querySelector('#shift').textContent.startsWith('shift open')",
                  "the open shift", WAIT)
    return page


def sell(page: Page, products: list[str], ticket: str) -> str:
    """Tap the products, pay cash, and wait for the printed ticket; returns its text."""
    for product in products:
        page.click(f'#grid [data-product="{product}"]')
    page.click("#pay-cash")
    page.wait_for(f"document.querySelector('#receipt').textContent.includes('{ticket}')",
                  f"the printed ticket {ticket}", WAIT)
    return page.text("#receipt")


def history(page: Page) -> dict[str, str]:
    rows: dict[str, str] = page.evaluate(HISTORY)
    return rows


def open_shifts(till: LanTill, count: int) -> list[dict[str, Any]]:
    """The till's open shifts (from its API), once there are ``count`` of them."""
    api = Api.of(till.path)

    def seen() -> list[dict[str, Any]] | None:
        rows: list[dict[str, Any]] = api.call("GET", "/api/shifts", query="open=true"
                                              ).body["shifts"]
        return rows if len(rows) == count else None

    found: list[dict[str, Any]] = wait_until(seen, f"{count} open shifts at {till.name}")
    return found


def note_shown(page: Page) -> bool:
    shown: bool = page.evaluate("!document.querySelector('#pending-note').hidden")
    return shown


@pytest.mark.slow
def test_a_cashier_sells_offline_and_the_page_shows_the_official_numbers_later(
        shop: Shop, tmp_path: Path) -> None:
    shop.relay.kill()  # the relay goes down: the till keeps selling
    with Browser.launch(tmp_path / "chromium") as browser:
        page = open_page(browser, shop.till)
        assert page.text('#grid [data-product="milk"] span') == "1.10"

        first = sell(page, ["bread", "milk"], "TILL1-000001")
        assert "Bread" in first and "Milk" in first and "4.30" in first
        assert note_shown(page)
        assert page.text("#pending-note") == "official invoice number assigned at sync"
        assert "INV-" not in first
        assert page.text("#total") == "0.00"  # the cart was emptied

        second = sell(page, ["milk", "milk"], "TILL1-000002")
        assert "2.20" in second and note_shown(page)
        page.wait_for(f"Object.keys({HISTORY}).length === 2", "two tickets in the history",
                      WAIT)
        assert history(page) == {"TILL1-000001": "pending", "TILL1-000002": "pending"}
        page.wait_for(f"{SYNC}.pending === '2'", "two sales pending in the sync panel", WAIT)
        assert page.evaluate(SYNC)["last error"].startswith("cannot sync with the relay")
        shot = page.screenshot(tmp_path / "till-page.png")
        assert shot.startswith(b"\x89PNG\r\n\x1a\n")
        keep = os.environ.get("TILLSYNC_TILL_PAGE_SCREENSHOT")
        if keep:
            Path(keep).write_bytes(shot)

        # The back office changes a price; it reaches the till over the LAN and the grid
        # shows it without a reload.
        shop.office.put("products", "milk", {"price": 125})
        page.wait_for("document.querySelector('#grid [data-product=\"milk\"] span')"
                      ".textContent === '1.25'", "the new price of milk in the grid", WAIT)
        assert page.text('#grid [data-product="milk"]').startswith("Milk")

        # The relay comes back: the official numbers arrive in the history, no reload.
        shop.relay.start()
        rows: dict[str, Any] = page.wait_for(
            f"(() => {{ const h = {HISTORY}; return Object.values(h).length === 2"
            " && Object.values(h).every((v) => v.startsWith('INV-')) ? h : null; })()",
            "both official invoice numbers in the history", WAIT)
        assert set(rows) == {"TILL1-000001", "TILL1-000002"}
        assert rows["TILL1-000001"] != rows["TILL1-000002"]

        # The ticket on screen (the second sale) was reprinted with its number as it came.
        page.wait_for(f"document.querySelector('#receipt').textContent"
                      f".includes('{rows['TILL1-000002']}')", "the shown ticket's number", WAIT)
        assert not note_shown(page)

        # A reprint of the first sale prints its official number.
        page.click('#tickets [data-reprint="TILL1-000001"]')
        page.wait_for(f"document.querySelector('#receipt').textContent"
                      f".includes('{rows['TILL1-000001']}')", "the reprinted invoice", WAIT)
        reprinted = page.text("#receipt")
        assert "TILL1-000001" in reprinted and "Bread" in reprinted
        assert not note_shown(page)


@pytest.mark.slow
def test_a_sale_on_one_tills_page_shows_on_the_others_when_its_receipt_arrives(
        tmp_path: Path) -> None:
    """Two tills on the LAN, each with its page open: each page sells in its own till's
    shift (the other till's shift, known here over the LAN, is not one this till may
    use), and each sees the other's sale with its official number."""
    with Relays(tmp_path, None) as relays:
        relay = relays.start()
        office = LanTill(tmp_path / "office", "Office")
        one, two = LanTill(tmp_path / "one", "Till 1"), LanTill(tmp_path / "two", "Till 2")
        office.init(relay, STORE)
        office.put_many(cast(list[tuple[str, str, dict[str, Any]]], MASTER))
        office.sync()
        # Till 2's shift id sorts first: the first open shift Till 1 hears of is not its own.
        shifts = [(one, "f" + SHIFT[1:]), (two, "0" + SHIFT[1:])]
        for till, shift in shifts:
            till.init(relay, STORE, role="till")
            till.sync()
            till.record("shift_open", {"cashier_id": "ann", "opening_cash": 1000}, shift)
            till.sync()
        with linked(office, one, two), Browser.launch(tmp_path / "chromium") as browser:
            for till, own in shifts:  # each knows both shifts (over the LAN)
                mine = {s["shift_client_id"]: s["mine"] for s in open_shifts(till, 2)}
                assert mine == {shift: shift == own for _, shift in shifts}
            pages = [open_page(browser, till) for till in (one, two)]
            sell(pages[0], ["bread"], "TILL1-000001")
            sell(pages[1], ["milk"], "TILL2-000001")
            for seller, buyer, ticket in ((0, 1, "TILL1-000001"), (1, 0, "TILL2-000001")):
                rows: dict[str, str] = pages[buyer].wait_for(
                    f"(() => {{ const h = {HISTORY}; return (h['{ticket}'] || '')"
                    ".startsWith('INV-') ? h : null; })()",
                    f"Till {seller + 1}'s sale with its number on Till {buyer + 1}'s page", WAIT)
                # The seller's own page shows the same number (its event may come later).
                pages[seller].wait_for(f"{HISTORY}['{ticket}'] === '{rows[ticket]}'",
                                       f"Till {seller + 1}'s own page to show {rows[ticket]}",
                                       WAIT)


@pytest.mark.slow
def test_the_sync_panel_counts_a_sale_as_pending_at_once(tmp_path: Path) -> None:
    """A till whose daemon does not talk to the relay (``--no-relay``: no sync events to
    wake the page) still shows each sale it makes in its pending count."""
    with Relays(tmp_path, None) as relays:
        till = LanTill(tmp_path / "till", "Till 1")
        till.init(relays.start(), STORE)
        till.put_many(cast(list[tuple[str, str, dict[str, Any]]], MASTER))
        till.record("shift_open", {"cashier_id": "ann", "opening_cash": 1000}, SHIFT)
        till.sync()
    till.start([], relay=False)
    try:
        with Browser.launch(tmp_path / "chromium") as browser:
            page = open_page(browser, till)
            assert page.evaluate(SYNC)["pending"] == "0"
            for n in (1, 2):
                sell(page, ["bread"], f"TILL1-00000{n}")
                page.wait_for(f"{SYNC}.pending === '{n}'", f"{n} pending in the sync panel",
                              WAIT)
    finally:
        till.stop()

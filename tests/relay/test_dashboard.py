"""The relay's dashboard page in real headless Chromium (Debian's `chromium`), against a
real relay process on both backends with sales made by real tills on three days and
synced through the real path: the test reads the numbers the page shows and checks them
against sums it computes itself from the bodies it recorded, then takes a screenshot;
and a store's page shows that store's data only.

Chromium missing is a failure, not a skip (`.ci/run` installs it).  Set
TILLSYNC_DASHBOARD_SCREENSHOT=docs/dashboard.png to keep the screenshot (the README's).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from tests.doubles import sale
from tests.relay.processes import Relays, TillDir, cli_json, in_thread
from tests.relay.test_report_api import OTHER, shop
from tests.relay.test_report_api import STORE as API_STORE
from tests.services import unavailable
from tillsync.peer.store import Till

STORE = "store-dash"
CHROMIUM = "/usr/bin/chromium"
PRODUCTS = {
    "bread": {"name": "Bread", "sku": "B1", "price": 320, "reorder_level": "5"},
    "milk": {"name": "Milk", "sku": "M1", "price": 110, "reorder_level": "3"},
    "tomato": {"name": "Tomatoes", "sku": "T1", "price": 450, "volatile": True, "unit": "kg"},
    "cheese": {"name": "Cheese", "sku": "C1", "price": 1890, "unit": "kg"},
}
# (days ago, lines) per till; each line (product, qty, unit price).
SALES = {
    "Till A": [(2, (("bread", 2, 320), ("milk", 1, 110))), (2, (("tomato", "0.333", 479),)),
               (1, (("cheese", "0.5", 1890), ("bread", 1, 320))), (0, (("milk", 4, 110),))],
    "Till B": [(1, (("bread", 3, 300),)), (0, (("cheese", "0.275", 1890),
                                               ("tomato", "1.25", 450)))],
}
CASHIER = {"Till A": "ann", "Till B": "bob"}
OPENING = {"Till A": 5000, "Till B": 2000}


@pytest.fixture
def relays(tmp_path: Path, relay_db: str | None) -> Iterator[Relays]:
    with Relays(tmp_path, relay_db) as started:
        yield started


def amount(qty: int | str, price: int) -> int:
    """Half up to a whole minor unit: the rule of `peer/totals.py`, written out again here."""
    return int((Decimal(str(qty)) * price).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def money(shown: str) -> int:
    """'1,234.50' as shown -> 123450 minor units."""
    whole, cents = shown.replace(",", "").split(".")
    return int(whole + cents)


def record_at(till: TillDir, when: datetime, kind: str, body: dict[str, Any]) -> str:
    """Record an entry whose client time is ``when`` (the till's clock, set for it)."""
    async def record() -> str:
        async with await Till.open(till.path, wait=10.0, clock=lambda: when) as store:
            return (await store.record(kind, body)).client_id
    return in_thread(record)


class Page(HTMLParser):
    """What a dumped page shows: text by element id, and the rows of every table by id
    (each row a dict of its cells' text by data-col)."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.text: dict[str, str] = {}
        self.tables: dict[str, list[dict[str, str]]] = defaultdict(list)
        self.feet: dict[str, dict[str, str]] = {}
        self.body: dict[str, str] = {}
        self._open: list[tuple[str, str | None]] = []  # (tag, id) of open elements
        self._table: str | None = None
        self._section = ""
        self._row: dict[str, str] | None = None
        self._cell: str | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "body":
            self.body = {k: v or "" for k, v in a.items()}
        if tag == "table":
            self._table = a.get("id")
        elif tag in ("thead", "tbody", "tfoot"):
            self._section = tag
        elif tag == "tr":
            self._row = {}
        elif tag == "td":
            self._cell = a.get("data-col")
            if self._row is not None and self._cell:
                self._row[self._cell] = ""
        if tag not in ("br", "input", "meta", "img", "link"):
            self._open.append((tag, a.get("id")))
            if a.get("id"):
                self.text.setdefault(str(a["id"]), "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr" and self._table and self._row is not None:
            if self._section == "tbody":
                self.tables[self._table].append(self._row)
            elif self._section == "tfoot":
                self.feet[self._table] = self._row
            self._row = None
        elif tag == "td":
            self._cell = None
        elif tag == "table":
            self._table = None
        while self._open:
            if self._open.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        for _, element_id in self._open:
            if element_id:
                self.text[element_id] += data
        if self._row is not None and self._cell:
            self._row[self._cell] += data

    def rows(self, table: str, key: str) -> dict[str, dict[str, str]]:
        return {row[key]: row for row in self.tables[table]}


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    if not Path(CHROMIUM).exists():
        unavailable(CHROMIUM, "not installed",
                    "apt-get install chromium (.ci/run installs it when missing)")
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                           "--hide-scrollbars", "--virtual-time-budget=10000", *args],
                          capture_output=True, text=True, timeout=120, check=True)


def dump(url: str) -> Page:
    return Page(chromium("--dump-dom", url).stdout)


@pytest.mark.slow
def test_the_dashboard_shows_the_numbers_of_the_sales_recorded(tmp_path: Path,
                                                              relays: Relays) -> None:
    relay = relays.start()
    tills = {name: TillDir(tmp_path / name.replace(" ", "-"), name) for name in SALES}
    for till in tills.values():
        till.init(relay, STORE)
    a, b = tills["Till A"], tills["Till B"]
    a.put_many([("products", p, body) for p, body in PRODUCTS.items()]
               + [("cashiers", c, {"name": c.title(), "role": "cashier", "pin": "1234"})
                  for c in CASHIER.values()])
    a.sync()
    b.sync()
    now = datetime.now(UTC).replace(microsecond=0)
    start = now - timedelta(days=2, minutes=30)
    record_at(a, start, "stock_move", {"product_id": "bread", "direction": "in", "qty": 8,
                                       "reason": "delivery"})
    record_at(a, start, "stock_move", {"product_id": "milk", "direction": "in", "qty": 12,
                                       "reason": "delivery"})
    shifts = {name: record_at(till, start, "shift_open", {"cashier_id": CASHIER[name],
                                                           "opening_cash": OPENING[name]})
              for name, till in tills.items()}
    for name, sales in SALES.items():
        for i, (days_ago, lines) in enumerate(sales):
            record_at(tills[name], now - timedelta(days=days_ago, minutes=10 - i), "sale",
                      sale(*lines, shift_client_id=shifts[name]))
    record_at(a, now - timedelta(minutes=5), "cash_movement", {
        "direction": "out", "amount": 1000, "reason": "bank", "shift_client_id": shifts["Till A"]})
    record_at(a, now - timedelta(minutes=4), "shift_close", {
        "open_shift_client_id": shifts["Till A"], "closing_cash": 9000,
        "variance_reason": "coins miscounted"})
    for till in tills.values():
        assert till.sync_json()["pending"] == 0

    # Independent sums, from the bodies recorded.
    day = {ago: (now - timedelta(days=ago)).date().isoformat() for ago in (0, 1, 2)}
    by_day: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    qty: dict[str, Decimal] = defaultdict(Decimal)
    revenue: dict[str, int] = defaultdict(int)
    by_till: dict[str, int] = defaultdict(int)
    paid: dict[str, int] = defaultdict(int)
    for name, sales in SALES.items():
        for days_ago, lines in sales:
            total = sum(amount(q, p) for _, q, p in lines)
            by_day[day[days_ago]][0] += 1
            by_day[day[days_ago]][1] += total
            by_till[name] += total
            paid[name] += int(sum(Decimal(str(q)) * p for _, q, p in lines))
            for product, q, p in lines:
                qty[product] += Decimal(str(q))
                revenue[product] += amount(q, p)
    grand = sum(by_till.values())

    token = cli_json("relay", "token", "--data", str(relay.data),
                     *(["--db", relay.db] if relay.db else []), "--store", STORE)["token"]
    page_url = f"http://127.0.0.1:{relay.port}/dashboard"
    with urllib.request.urlopen(page_url, timeout=10) as answer:
        assert answer.headers["Content-Type"] == "text/html; charset=utf-8"
        assert "default-src 'none'" in answer.headers["Content-Security-Policy"]
        html = answer.read().decode()
    assert "<link" not in html and " src=" not in html  # self-contained: no CDN, no file

    page = dump(f"{page_url}#store={STORE}&token={token}")
    assert page.body.get("data-state") == "ready", page.text.get("status")
    assert money(page.text["kpi-revenue"]) == grand
    assert page.text["kpi-sales"] == str(sum(len(s) for s in SALES.values()))
    assert page.text["kpi-open-shifts"] == "1" and page.text["kpi-low"] == "1"

    shown_days = page.rows("t-sales", "period")
    assert {d: [int(r["sales"]), money(r["revenue"])] for d, r in shown_days.items()} == by_day
    assert money(page.feet["t-sales"]["revenue"]) == grand
    chart = page.text["sales-chart"]
    assert all(d in chart for d in day.values())  # the SVG's axis labels

    products = page.rows("t-products", "product_id")
    assert {p.split(" (")[1].rstrip(")"): (Decimal(r["qty"]), money(r["revenue"]))
            for p, r in products.items()} == {p: (qty[p], revenue[p]) for p in qty}
    assert [money(r["revenue"]) for r in page.tables["t-products"]] == \
        sorted(revenue.values(), reverse=True)
    assert money(products["Tomatoes (tomato)"]["avg_unit_price"]) == \
        round(revenue["tomato"] / qty["tomato"])
    assert "Cheese" in page.text["products-chart"]

    assert {n: money(r["revenue"]) for n, r in page.rows("t-tills", "name").items()} == by_till
    assert {c: money(r["revenue"]) for c, r in page.rows("t-cashiers", "cashier_id").items()} \
        == {CASHIER[n]: t for n, t in by_till.items()}

    z = page.rows("t-shifts", "till")
    expected_a = OPENING["Till A"] + paid["Till A"] - 1000
    assert {k: money(z["Till A"][k]) for k in ("opening_cash", "cash_sales", "cash_out",
                                                "expected_cash", "counted_cash", "variance")} \
        == {"opening_cash": 5000, "cash_sales": paid["Till A"], "cash_out": -1000,
            "expected_cash": expected_a, "counted_cash": 9000, "variance": 9000 - expected_a}
    assert z["Till A"]["variance_reason"] == "coins miscounted"
    assert money(z["Till B"]["expected_cash"]) == OPENING["Till B"] + paid["Till B"]
    assert z["Till B"]["closed_at"] == "open"

    stock = page.rows("t-stock", "product_id")
    sold = {p: sum((Decimal(str(q)) for s in SALES.values() for _, lines in s
                    for pp, q, _ in lines if pp == p), Decimal(0)) for p in PRODUCTS}
    assert Decimal(stock["Bread (bread)"]["qty"]) == 8 - sold["bread"] == 2
    assert stock["Bread (bread)"]["low"] == "LOW"
    assert Decimal(stock["Milk (milk)"]["qty"]) == 12 - sold["milk"] == 7
    assert stock["Milk (milk)"]["low"] == ""
    assert stock["Tomatoes (tomato)"]["qty"] == "not tracked"
    assert [(r["product_id"], r["qty"]) for r in page.tables["t-alerts"]] == [("Bread", "2")]

    devices = page.rows("t-devices", "name")
    assert {n: int(r["entries"]) for n, r in devices.items()} == {
        "Till A": 2 + 1 + len(SALES["Till A"]) + 2, "Till B": 1 + len(SALES["Till B"])}
    assert all(r["last_seen"] and r["rejected"] == "0" for r in devices.values())

    invoices = page.tables["t-invoices"]
    assert len(invoices) == 6 and page.feet["t-invoices"]["invoice_no"] == "6 in range"
    assert money(page.feet["t-invoices"]["total"]) == grand
    assert sorted(r["invoice_no"] for r in invoices) == [f"INV-{n}" for n in range(1, 7)]
    assert "6 issued, 1..6, no gap" in page.text["invoices-series"]

    # The range and the period come from the fragment too: yesterday alone, by month.
    one = dump(f"{page_url}#store={STORE}&token={token}&from={day[1]}&to={day[1]}"
               f"&period=month")
    assert [(r["period"], money(r["revenue"])) for r in one.tables["t-sales"]] == \
        [(day[1][:7], by_day[day[1]][1])]

    # A wrong token (or another store's) shows the API's refusal, and no numbers.
    refused = dump(f"{page_url}#store={STORE}&token=tsk_wrong")
    assert refused.body.get("data-state") == "error"
    assert "401" in refused.text["status"] and refused.text["kpi-revenue"] == "–"

    shot = tmp_path / "dashboard.png"
    chromium(f"--screenshot={shot}", "--window-size=1400,1650",
             f"{page_url}#store={STORE}&token={token}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    keep = os.environ.get("TILLSYNC_DASHBOARD_SCREENSHOT")
    if keep:
        shutil.copyfile(shot, keep)


@pytest.mark.slow
def test_a_stores_dashboard_shows_that_store_only_and_asks_for_a_token(
        tmp_path: Path, relays: Relays) -> None:
    relay = relays.start()
    _, token, other_token = shop(tmp_path, relay)  # sales of 1 and 2 loaves at 3.00
    page_url = f"http://127.0.0.1:{relay.port}/dashboard"
    url = f"{page_url}#" + urllib.parse.urlencode({"store": API_STORE, "token": token})
    page = dump(url)
    assert page.body.get("data-state") == "ready", page.text.get("status")
    assert page.text["kpi-revenue"] == "9.00" and page.text["kpi-sales"] == "2"
    assert "2 issued, 1..2, no gap" in page.text["invoices-series"]
    assert list(page.rows("t-devices", "name")) == [f"Till of {API_STORE}"]
    assert f"Till of {OTHER}" not in chromium("--dump-dom", url).stdout

    # No token: the page waits for one to be typed in; another store's: the API's 401.
    assert dump(page_url).body.get("data-state") == "idle"
    refused = dump(url.replace(token, other_token))
    assert refused.body.get("data-state") == "error"
    assert "401" in refused.text["status"] and "does not open store" in refused.text["status"]

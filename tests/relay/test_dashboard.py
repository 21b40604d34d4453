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

from tests.browser import Browser
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
# Sales paid on a customer's account, by (till, index in SALES): the customer.
ON_ACCOUNT = {("Till B", 0): "cafe"}
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
                  for c in CASHIER.values()]
               + [("customers", "cafe", {"name": "Corner Café", "credit_limit": 2000}),
                  ("customers", "ida", {"name": "Ida", "credit_limit": 5000}),
                  ("suppliers", "mill", {"name": "The Mill"}),
                  ("settings", "store", {"store_name": "Dash Shop", "currency": "EUR"})])
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
    made: dict[str, list[str]] = defaultdict(list)
    for name, sales in SALES.items():
        for i, (days_ago, lines) in enumerate(sales):
            # Till B's last sale claims a wrong total: invoiced at the relay's, listed.
            extra: dict[str, Any] = {"client_total": 1} if (name, i) == ("Till B", 1) else {}
            if (name, i) in ON_ACCOUNT:
                extra.update(customer_id=ON_ACCOUNT[name, i], payments=[
                    {"method": "account", "amount": sum(amount(q, p) for _, q, p in lines)}])
            made[name].append(record_at(tills[name], now - timedelta(days=days_ago,
                                                                    minutes=10 - i), "sale",
                                        sale(*lines, shift_client_id=shifts[name], **extra)))
    # A card refund of one milk in Till A's shift, not restocked; an expense, a held sale
    # (Till B) and a purchase order (Till A).
    record_at(a, now - timedelta(minutes=6), "refund", {
        "original_sale_client_id": made["Till A"][-1], "lines": [
            {"product_id": "milk", "qty": 1, "unit_price": 110}], "method": "card",
        "amount": 110, "shift_client_id": shifts["Till A"], "restock": False,
        "reason": "sour"})
    record_at(b, now - timedelta(minutes=6), "expense", {
        "amount": 450, "category": "cleaning", "description": "soap", "method": "card"})
    record_at(b, now - timedelta(minutes=5), "held_sale", {
        "lines": [{"product_id": "bread", "qty": 2, "unit_price": 320}],
        "shift_client_id": shifts["Till B"], "note": "back at five"})
    record_at(a, now - timedelta(minutes=6), "purchase_order", {
        "supplier_id": "mill", "lines": [{"product_id": "bread", "qty": 40, "unit_cost": 150}]})
    record_at(a, now - timedelta(minutes=5), "cash_movement", {
        "direction": "out", "amount": 1000, "reason": "bank", "shift_client_id": shifts["Till A"]})
    record_at(a, now - timedelta(minutes=4), "shift_close", {
        "open_shift_client_id": shifts["Till A"], "closing_cash": 9000,
        "variance_reason": "coins miscounted"})
    # The back office lowers the café's credit limit below what it owes now.
    a.put("customers", "cafe", {"credit_limit": 500})
    for till in tills.values():
        assert till.sync_json()["pending"] == 0

    # Independent sums, from the bodies recorded.
    day = {ago: (now - timedelta(days=ago)).date().isoformat() for ago in (0, 1, 2)}
    by_day: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    qty: dict[str, Decimal] = defaultdict(Decimal)
    revenue: dict[str, int] = defaultdict(int)
    by_till: dict[str, int] = defaultdict(int)
    paid: dict[str, int] = defaultdict(int)
    owed: dict[str, int] = defaultdict(int)  # on account, by customer
    for name, sales in SALES.items():
        for i, (days_ago, lines) in enumerate(sales):
            total = sum(amount(q, p) for _, q, p in lines)
            by_day[day[days_ago]][0] += 1
            by_day[day[days_ago]][1] += total
            by_till[name] += total
            if (name, i) in ON_ACCOUNT:
                owed[ON_ACCOUNT[name, i]] += total
            else:
                paid[name] += int(sum(Decimal(str(q)) * p for _, q, p in lines))
            for product, q, p in lines:
                qty[product] += Decimal(str(q))
                revenue[product] += amount(q, p)
    grand = sum(by_till.values())
    refunded = 110

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
    assert money(page.text["kpi-revenue"]) == grand - refunded
    assert [money(x) for x in page.text["kpi-gross"].split(" / ")] == [grand, refunded]
    assert page.text["currency"] == "EUR" and "(EUR)" in page.text["t-sales"]
    assert page.text["kpi-sales"] == str(sum(len(s) for s in SALES.values()))
    assert page.text["kpi-open-shifts"] == "1" and page.text["kpi-low"] == "1"

    # Every day of the range (the last 30 by default) has a row, those without sales 0.
    shown_days = page.rows("t-sales", "period")
    first = (now - timedelta(days=29)).date()
    assert list(shown_days) == [(first + timedelta(days=i)).isoformat() for i in range(30)]
    assert {d: [int(r["sales"]), money(r["gross"])] for d, r in shown_days.items()
            if r["sales"] != "0"} == by_day
    assert all(money(r["revenue"]) == 0 for d, r in shown_days.items() if d not in by_day)
    assert money(shown_days[day[0]]["refunds"]) == refunded
    assert money(shown_days[day[0]]["revenue"]) == by_day[day[0]][1] - refunded
    assert money(page.feet["t-sales"]["revenue"]) == grand - refunded
    chart = page.text["sales-chart"]
    assert all(d in chart for d in day.values())  # the SVG's axis labels

    products = page.rows("t-products", "product_id")
    net_of = {**revenue, "milk": revenue["milk"] - refunded}  # one milk refunded
    assert {p.split(" (")[1].rstrip(")"): (Decimal(r["qty"]), money(r["gross"]),
                                           money(r["revenue"]))
            for p, r in products.items()} == {p: (qty[p], revenue[p], net_of[p]) for p in qty}
    assert products["Milk (milk)"]["refunded_qty"] == "1"
    assert [money(r["revenue"]) for r in page.tables["t-products"]] == \
        sorted(net_of.values(), reverse=True)
    assert money(products["Tomatoes (tomato)"]["avg_unit_price"]) == \
        round(revenue["tomato"] / qty["tomato"])
    assert "Cheese" in page.text["products-chart"]

    net = {**by_till, "Till A": by_till["Till A"] - refunded}
    assert {n: money(r["revenue"]) for n, r in page.rows("t-tills", "name").items()} == net
    assert {c: money(r["revenue"]) for c, r in page.rows("t-cashiers", "name").items()} \
        == {CASHIER[n].title(): t for n, t in net.items()}  # names, not ids

    # The new reports: refunds, expenses, the wrong total, the held sale, the draft.
    assert [(r["refunds"], money(r["amount"]), r["by_method"])
            for r in page.tables["t-refunds"]] == [("1", refunded, "card 1.10")]
    assert [(r["category"], money(r["amount"])) for r in page.tables["t-expenses"]] == [
        ("cleaning", 450)]
    assert [money(r["net"]) for r in page.tables["t-cash"]] == [-1000]
    wrong = page.tables["t-mismatches"]
    assert [(r["till"], money(r["client_total"]), money(r["total"])) for r in wrong] == [
        ("Till B", 1, sum(amount(q, p) for _, q, p in SALES["Till B"][1][1]))]
    assert wrong[0]["invoice"].startswith("INV-0000")
    assert [(r["till"], money(r["amount"]), r["note"], r["state"])
            for r in page.tables["t-held"]] == [("Till B", 640, "back at five", "held")]
    assert [(r["kind"], money(r["amount"]), r["note"]) for r in page.tables["t-drafts"]] == [
        ("purchase order", 6000, "mill")]
    assert page.text["waiting-table"] == "no entry waiting"
    # The café owes its sale on account, above the limit lowered since; Ida owes nothing.
    assert [(r["customer_id"], money(r["balance"]), money(r["credit_limit"]),
             money(r["over_by"])) for r in page.tables["t-credit"]] == [
        ("Corner Café (cafe)", owed["cafe"], 500, owed["cafe"] - 500)]
    assert owed["cafe"] == 900
    # One product's analytics: the best seller, by day.
    top = max(net_of, key=lambda p: net_of[p])
    assert page.text["product-summary"].startswith(f"{qty[top]} sold, 0 refunded")
    per_day: dict[str, Decimal] = defaultdict(Decimal)
    for sales in SALES.values():
        for ago, lines in sales:
            for product, q, _ in lines:
                if product == top:
                    per_day[day[ago]] += Decimal(str(q))
    assert {r["period"]: Decimal(r["qty"]) for r in page.tables["t-product"]} == per_day

    z = page.rows("t-shifts", "till")
    expected_a = OPENING["Till A"] + paid["Till A"] - 1000
    assert {k: money(z["Till A"][k]) for k in ("opening_cash", "cash_sales", "cash_out",
                                                "expected_cash", "counted_cash", "variance")} \
        == {"opening_cash": 5000, "cash_sales": paid["Till A"], "cash_out": -1000,
            "expected_cash": expected_a, "counted_cash": 9000, "variance": 9000 - expected_a}
    assert z["Till A"]["variance_reason"] == "coins miscounted"
    assert money(z["Till B"]["expected_cash"]) == OPENING["Till B"] + paid["Till B"]
    assert (z["Till B"]["state"], z["Till B"]["closed_at"]) == ("open", "")
    assert z["Till A"]["state"] == "closed" and z["Till A"]["closed_at"].startswith(day[0])

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
        "Till A": 2 + 1 + len(SALES["Till A"]) + 2 + 2, "Till B": 1 + len(SALES["Till B"]) + 2}
    assert all(r["last_seen"] and r["rejected"] == "0" for r in devices.values())

    invoices = page.tables["t-invoices"]
    assert len(invoices) == 6 and page.feet["t-invoices"]["invoice_no"] == "6 in range"
    assert money(page.feet["t-invoices"]["total"]) == grand
    assert sorted(r["invoice_no"] for r in invoices) == [f"INV-{n:06d}" for n in range(1, 7)]
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

    # Driven over DevTools: the date fields are ISO text (not the browser's mm/dd/yyyy
    # picker) and refuse anything else; no two date labels under the chart overlap.
    with Browser.launch(tmp_path / "chromium", width=1400, height=1000) as browser:
        view = browser.page()
        view.navigate(f"{page_url}#store={STORE}&token={token}")
        view.wait_for("document.body.dataset.state === 'ready'", "the dashboard")
        assert view.evaluate("['from', 'to'].map((id) => [document.getElementById(id).type, "
                             "document.getElementById(id).value])") == [
            ["text", first.isoformat()], ["text", day[0]]]
        labels = view.evaluate(
            "[...document.querySelectorAll('#sales-chart svg text[text-anchor=middle]')]"
            ".map((t) => { const b = t.getBBox(); return [t.textContent, b.x, b.x + b.width]; })")
        assert len(labels) >= 5 and all(label[0] in shown_days for label in labels)
        assert all(left[2] < right[1]
                   for left, right in zip(labels, labels[1:], strict=False)), labels
        shot = tmp_path / "dashboard.png"
        assert view.screenshot(shot)[:8] == b"\x89PNG\r\n\x1a\n"
        assert shot.stat().st_size > 20_000
        view.evaluate("document.getElementById('from').value = '03/02/2026'; "
                      "document.getElementById('query').requestSubmit()")
        view.wait_for("document.body.dataset.state === 'error'", "the date refused")
        assert "03/02/2026 is not a date: write YYYY-MM-DD" in view.text("#status")
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

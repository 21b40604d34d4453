"""The relay's reporting API over HTTP, against a real relay process on both backends:
a store's token reads that store's reports (the same numbers as `tillsync report`),
and nothing else; bad parameters, missing or wrong tokens and unknown paths get a clear
JSON error.  Websocket devices still sync on the same port."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.doubles import sale
from tests.relay.processes import RelayProcess, Relays, TillDir, cli_json, run_cli

STORE, OTHER = "store-api", "store-other"


@pytest.fixture
def relays(tmp_path: Path, relay_db: str | None) -> Iterator[Relays]:
    with Relays(tmp_path, relay_db) as started:
        yield started


def get(relay: RelayProcess, path: str, token: str | None) -> tuple[int, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{relay.port}{path}")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        assert error.headers["Content-Type"].startswith("application/json")
        return error.code, json.loads(error.read())


def where(relay: RelayProcess) -> list[str]:
    return ["--db", relay.db] if relay.db else ["--data", str(relay.data)]


def shop(tmp_path: Path, relay: RelayProcess) -> tuple[dict[str, TillDir], str, str]:
    """Two stores with a till each and a few sales synced; a token of each store."""
    tills = {s: TillDir(tmp_path / s, f"Till of {s}") for s in (STORE, OTHER)}
    for store, till in tills.items():
        till.init(relay, store)
        till.put_many([("products", "bread", {"name": "Bread", "sku": "B", "price": 300}),
                       ("cashiers", "ann", {"name": "Ann", "role": "cashier", "pin": "1234"})])
        shift = till.record("shift_open", {"cashier_id": "ann", "opening_cash": 0})["client_id"]
        for qty in ((1, 2) if store == STORE else (5,)):
            till.record("sale", sale(("bread", qty, 300), shift_client_id=shift))
        assert till.sync_json()["pending"] == 0
    relay_args = ["--data", str(relay.data), *(["--db", relay.db] if relay.db else [])]
    token = cli_json("relay", "token", *relay_args, "--store", STORE)["token"]
    other_token = cli_json("relay", "token", *relay_args, "--store", OTHER)["token"]
    return tills, token, other_token


@pytest.mark.slow
def test_a_stores_token_reads_its_reports_and_nothing_else(tmp_path: Path,
                                                          relays: Relays) -> None:
    relay = relays.start()
    tills, token, other_token = shop(tmp_path, relay)
    base = f"/api/v1/stores/{STORE}/reports"

    status, by_product = get(relay, f"{base}/sales?by=product", token)
    assert status == 200 and by_product == cli_json(
        "report", "sales", *where(relay), "--store", STORE, "--by", "product")
    assert [(r["product_id"], r["qty"], r["revenue"]) for r in by_product] == \
        [("bread", "3", 900)]
    for name in ("invoices", "shifts", "stock", "alerts", "devices"):
        status, data = get(relay, f"{base}/{name}", token)
        assert status == 200, data
        assert data == cli_json("report", name, *where(relay), "--store", STORE)
    status, register = get(relay, f"{base}/invoices", token)
    assert [i["total"] for i in register["invoices"]] == [300, 600]
    assert (register["count"], register["total"]) == (2, 900)
    status, latest = get(relay, f"{base}/invoices?limit=1", token)
    assert status == 200 and [i["total"] for i in latest["invoices"]] == [600]
    assert (latest["count"], latest["series"]) == (2, register["series"])
    assert latest == cli_json("report", "invoices", *where(relay), "--store", STORE,
                              "--limit", "1")
    status, error = get(relay, f"{base}/invoices?limit=-1", token)
    assert status == 400 and "limit" in error["error"]

    # Never another store's data: its token does not open this store, nor this one that.
    assert get(relay, f"{base}/sales", other_token)[0] == 401
    assert get(relay, f"/api/v1/stores/{OTHER}/reports/sales", token)[0] == 401
    status, error = get(relay, f"{base}/sales", None)
    assert status == 401 and "Bearer" in error["error"]
    assert get(relay, f"{base}/sales", "tsk_wrong")[0] == 401
    status, error = get(relay, f"{base}/sales?from=2026-02-30", token)
    assert status == 400 and "is not a date" in error["error"]
    assert get(relay, f"{base}/sales?by=weather", token)[0] == 400
    status, error = get(relay, f"{base}/sales?by=product&product=caviar", token)
    assert status == 400 and "no product 'caviar'" in error["error"]
    status, bread = get(relay, f"{base}/sales?by=product&product=bread", token)
    assert status == 200 and bread == by_product
    assert get(relay, f"{base}/payroll", token)[0] == 404
    assert get(relay, f"{base}/invoices?ticket=NOPE-1", token)[0] == 404

    # The websocket side is untouched on the same port.
    assert tills[STORE].sync_json()["pending"] == 0


@pytest.mark.slow
def test_a_token_is_refused_for_a_store_the_relay_does_not_know(relays: Relays) -> None:
    relay = relays.start()
    done = run_cli("relay", "token", "--data", str(relay.data),
                   *(["--db", relay.db] if relay.db else []), "--store", "nowhere", check=False)
    assert done.returncode == 2 and "no store 'nowhere'" in done.stderr


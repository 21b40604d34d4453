"""A till's way back, against real relay processes and tills driven by the command line:
a till that sold on its own joins a relay with everything it holds, and a till whose
numbering a refused entry stopped says so loudly."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.relay.processes import RelayProcess, Relays, TillDir, enroll_code, run_cli
from tests.relay.test_ops import sell


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory, module_relay_db: str | None
          ) -> Iterator[RelayProcess]:
    with Relays(tmp_path_factory.mktemp("way-back"), module_relay_db) as relays:
        yield relays.start()


def standalone(path: Path) -> tuple[TillDir, list[str]]:
    """A till of its own (no relay) with a catalogue, an open shift and three sales."""
    till = TillDir(path, "Till 1")
    run_cli("peer", "init", str(path), "--name", "Till 1")
    till.put("products", "bread", {"name": "Bread", "sku": "B1", "price": 320})
    till.put("cashiers", "ann", {"name": "Ann", "role": "cashier", "pin": "1234"})
    shift = till.record("shift_open", {"cashier_id": "ann", "opening_cash": 0})["client_id"]
    return till, [sell(till, shift)["client_id"] for _ in range(3)]


@pytest.mark.parametrize("verb", ["enroll", "init"])
def test_a_till_that_sold_on_its_own_joins_a_relay(tmp_path: Path, relay: RelayProcess,
                                                   verb: str) -> None:
    till, sales = standalone(tmp_path / "till")
    before = till.status()
    assert before["relay"] is None and before["pending"] == 4
    store = f"shop-{verb}"
    code = enroll_code(relay, store, "Till 1")
    extra = ("--name", "Till 1") if verb == "init" else ()
    result = run_cli("peer", verb, str(till.path), *extra, "--relay", relay.url, "--code", code)
    assert "log and master data kept" in result.stdout
    after = till.status()
    assert (after["store_id"], after["device_id"]) == (store, before["device_id"])
    assert after["pending"] == 4  # nothing went up yet, nothing was lost
    assert till.sync_json()["pending"] == 0
    numbered = {r["client_id"]: r for r in till.receipts(mine=True)}
    assert all("invoice_no" in numbered[s] for s in sales)
    assert {r["ticket"] for r in numbered.values() if r.get("ticket")} == {
        "TILL1-000001", "TILL1-000002", "TILL1-000003"}  # the tickets it printed
    # The catalogue made offline is at the relay: a new till of the store gets it.
    other = TillDir(tmp_path / "other", "Till 2")
    other.init(relay, store)
    other.sync()
    assert other.master("products")["bread"]["price"] == 320
    assert "ok:" in run_cli("peer", "verify", str(till.path)).stdout


def test_enrolling_twice_or_nothing_is_refused(tmp_path: Path, relay: RelayProcess) -> None:
    till = TillDir(tmp_path / "till", "Till 1")
    till.init(relay, "shop-twice")
    result = run_cli("peer", "enroll", str(till.path), "--relay", relay.url, "--code",
                     enroll_code(relay, "shop-twice", "Till 1"), check=False)
    assert result.returncode == 3 and "enrolled already" in result.stderr
    result = run_cli("peer", "enroll", str(tmp_path / "none"), "--relay", relay.url,
                     "--code", "X", check=False)
    assert result.returncode == 2 and "no tillsync store" in result.stderr
    assert json.loads(run_cli("peer", "status", str(till.path), "--json").stdout)[
        "store_id"] == "shop-twice"

"""Integers at the edge of tillsync's one range (``schemas.limits``), against a running relay.

Validly signed entries whose bodies hold huge money or imply huge figures are rejected
one by one (``schema`` for what the schemas bound, ``out_of_range`` for line amounts and
totals), the device's chain goes on, other devices and other links are not touched, and
every report still runs.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.doubles import sale
from tests.relay.processes import (
    RawSession,
    RelayProcess,
    invoices,
    run_cli,
)
from tests.relay.test_bad_input import enrolled, new_store, selling, still_serving
from tillsync.peer.sync.engine import Ingested
from tillsync.schemas.limits import INTEGER_MAX

HUGE_QTY = 999_999_999  # the largest integer quantity: times the largest price, far out



def status(receipt: dict[str, Any]) -> tuple[str, str | None]:
    return receipt["status"], receipt.get("error", {}).get("code")


def where(relay: RelayProcess) -> list[str]:
    return ["--db", relay.db] if relay.db else ["--data", str(relay.data)]


async def test_a_shift_open_with_opening_cash_of_2_64_minus_1_is_rejected_and_the_till_goes_on(
        relay: RelayProcess) -> None:
    store = new_store()
    chain = await enrolled(relay, store)
    bad = chain.next("shift_open", {"cashier_id": "ann", "opening_cash": 2**64 - 1})
    good = chain.next("shift_open", {"cashier_id": "ann", "opening_cash": INTEGER_MAX})
    later = chain.next("sale", sale(("bread", 1, 320), shift_client_id=good.client_id))
    session = await RawSession.open(relay.url, store, chain.device_id, chain.key)
    try:
        assert (await session.push([bad])).heads == {chain.device_id: 1}
        receipts = await session.receipts_until(1)
        assert status(receipts[0]) == ("rejected", "schema")
        assert "opening_cash" in receipts[0]["error"]["message"]
        # Its later entries are decided as usual.
        assert (await session.push([good, later])).heads == {chain.device_id: 3}
        receipts = await session.receipts_until(3)
        assert [status(r) for r in receipts[1:]] == [("accepted", None), ("accepted", None)]
        assert receipts[2]["invoice_no"] == 1
    finally:
        await session.close()
    await still_serving(relay)


async def test_a_sale_whose_total_passes_the_range_is_rejected_out_of_range(
        relay: RelayProcess) -> None:
    store, chain, session = await selling(relay)
    try:
        shift = chain.entries[0].client_id
        line = sale(("bread", HUGE_QTY, INTEGER_MAX), cash=0, shift_client_id=shift)
        two = sale(("bread", 1, INTEGER_MAX), ("milk", 1, 1), cash=0, shift_client_id=shift)
        bad_line, bad_total = chain.next("sale", line), chain.next("sale", two)
        edge = chain.next("sale", sale(("bread", 1, INTEGER_MAX), cash=INTEGER_MAX,
                                       shift_client_id=shift))
        assert (await session.push([bad_line, bad_total, edge])).heads == {chain.device_id: 5}
        receipts = (await session.receipts_until(5))[2:]
        assert [status(r) for r in receipts] == [("rejected", "out_of_range"),
                                                 ("rejected", "out_of_range"),
                                                 ("accepted", None)]
        assert "lines[0]" in receipts[0]["error"]["message"]
        assert "total" in receipts[1]["error"]["message"]
        assert (receipts[2]["invoice_no"], receipts[2]["total"]) == (2, INTEGER_MAX)
        assert [r[1] for r in invoices(relay, store)] == [1, 2]
    finally:
        await session.close()
    await still_serving(relay)


async def test_a_waiting_sale_out_of_range_does_not_fail_another_tills_shift_open(
        relay: RelayProcess) -> None:
    """Till 1 sends sales naming a shift till 2 opens later; when till 2's shift_open
    arrives, what waited on it is decided (by the shift rules, as another device's
    shift) and the bad sale is rejected for its range: the shift opens all the same."""
    store = new_store()
    one, two = await enrolled(relay, store), await enrolled(relay, store)
    shift = two.next("shift_open", {"cashier_id": "bob", "opening_cash": 100})  # sent later
    bad = one.next("sale", sale(("bread", HUGE_QTY, INTEGER_MAX), cash=0,
                                shift_client_id=shift.client_id))
    fine = one.next("sale", sale(("bread", 2, 320), shift_client_id=shift.client_id))
    first = await RawSession.open(relay.url, store, one.device_id, one.key)
    try:
        await first.push([bad, fine])
        early = {r["client_id"]: status(r) for r in await first.receipts_until(2)}
        assert early[fine.client_id] == ("waiting", None)
    finally:
        await first.close()
    second = await RawSession.open(relay.url, store, two.device_id, two.key)
    try:
        assert (await second.push(two.entries)).heads == {two.device_id: 1}
        receipts = await second.receipts_until(4)
        final = {r["client_id"]: status(r) for r in receipts}
        assert final[shift.client_id] == ("accepted", None)
        assert final[fine.client_id] == ("rejected", "foreign_shift")
        assert final[bad.client_id] == ("rejected", "out_of_range")
        assert invoices(relay, store) == []
    finally:
        await second.close()
    await still_serving(relay)


async def test_a_bad_batch_committed_with_an_honest_one_fails_neither(
        relay: RelayProcess) -> None:
    """Four batches of one link keep the relay's writer busy while a bad batch and an
    honest one of two other links queue behind them: they go into one group commit."""
    stores = [new_store() for _ in range(3)]
    chains = [await enrolled(relay, store) for store in stores]
    sessions = [await RawSession.open(relay.url, s, c.device_id, c.key)
                for s, c in zip(stores, chains, strict=True)]
    try:
        busy, bad, honest = chains
        for chain in chains:
            chain.next("shift_open", {"cashier_id": "ann", "opening_cash": 0})
        shift = [c.entries[0].client_id for c in chains]
        for _ in range(4 * 150):
            busy.next("sale", sale(("bread", 1, 320), shift_client_id=shift[0]))
        bad.next("sale", sale(("bread", HUGE_QTY, INTEGER_MAX), cash=0,
                              shift_client_id=shift[1]))
        honest.next("sale", sale(("bread", 1, 320), shift_client_id=shift[2]))
        for start in range(0, len(busy.entries), 150):
            sessions[0].link.send_entries(busy.entries[start:start + 150])
        for session, chain in zip(sessions[1:], chains[1:], strict=True):
            session.link.send_entries(chain.entries)
        await asyncio.gather(*(s.flush() for s in sessions))
        answers = await asyncio.gather(*(s.wait_for(lambda e: isinstance(e, Ingested))
                                         for s in sessions[1:]))
        assert [a.heads for a in answers] == [  # type: ignore[attr-defined]
            {c.device_id: len(c.entries)} for c in chains[1:]]
        got = await asyncio.gather(*(s.receipts_until(len(c.entries))
                                     for s, c in zip(sessions, chains, strict=True)))
        decided = [{r["client_id"]: status(r) for r in receipts} for receipts in got]
        assert decided[1][bad.entries[-1].client_id] == ("rejected", "out_of_range")
        assert decided[2][honest.entries[-1].client_id] == ("accepted", None)
        assert [r[1] for r in invoices(relay, stores[2])] == [1]
        assert len(invoices(relay, stores[0])) == 600
    finally:
        for session in sessions:
            await session.close()


@pytest.mark.parametrize("price", [2**63 - 1, INTEGER_MAX])
async def test_report_invoices_runs_after_a_huge_sale(relay: RelayProcess, price: int) -> None:
    store, chain, session = await selling(relay)
    try:
        # In a shift of its own: the register's total sums the two shifts' revenue.
        shift = chain.next("shift_open", {"cashier_id": "ann", "opening_cash": 0})
        huge = chain.next("sale", sale(("bread", 1, price), cash=price,
                                       shift_client_id=shift.client_id))
        await session.push([shift, huge])
        receipt = {r["client_id"]: r for r in await session.receipts_until(4)}[huge.client_id]
    finally:
        await session.close()
    result = run_cli("report", "invoices", *where(relay), "--store", store, check=False)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 0, result.stderr
    if price > INTEGER_MAX:
        assert status(receipt) == ("rejected", "schema")
        assert len(invoices(relay, store)) == 1
    else:
        assert status(receipt) == ("accepted", None)
        assert str(INTEGER_MAX + 640) in result.stdout  # the register's total
    for report in (["sales"], ["sales", "--by", "product"], ["sales", "--by", "till"],
                   ["sales", "--by", "cashier"], ["shifts"], ["stock"], ["alerts"],
                   ["devices"]):
        run_cli("report", *report, *where(relay), "--store", store)


"""Malformed frames at a real relay process (``tools.fuzz_frames``), logged in and not.

The relay must never crash nor answer ``internal``; every frame gets an error frame
with a documented code (closing the link if fatal), an ``ingested`` for an ``entries``
frame of the right shape, or a documented close code.  Nothing stored changes (the
receipt stream only grows by ``rejected`` receipts for the broken entries), and an
honest device still gets its next sale numbered.  CI sends a few thousand frames;
``TILLSYNC_HYPOTHESIS_PROFILE=long`` sends 100,000.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.doubles import sale
from tests.relay.processes import (
    Chain,
    RawSession,
    Relays,
    invoices,
    relay_receipts,
    snapshot,
    store_key,
)
from tests.relay.test_bad_input import PRODUCT_SALE, enrolled, new_store, unchanged
from tillsync.peer.sync.receipts import GENESIS, verify_receipts
from tillsync.tools.fuzz_frames import Target, fuzz

LONG = os.environ.get("TILLSYNC_HYPOTHESIS_PROFILE") == "long"
FRAMES = 100_000 if LONG else 3_000


@pytest.mark.slow
async def test_malformed_frames_change_nothing_and_the_relay_keeps_serving(
        tmp_path: Path, relay_db: str | None) -> None:
    with Relays(tmp_path, relay_db) as relays:
        relay = relays.start()
        store = new_store()
        chain: Chain = await enrolled(relay, store)
        shift = chain.next("shift_open", {"cashier_id": "ann", "opening_cash": 0})
        chain.next("sale", sale(*PRODUCT_SALE, shift_client_id=shift.client_id))
        session = await RawSession.open(relay.url, store, chain.device_id, chain.key)
        await session.push(chain.entries)
        await session.receipts_until(2)
        await session.close()
        before = snapshot(relay, store)

        report = await fuzz(Target(relay.url, store, chain.device_id, chain.key,
                                   list(chain.entries)), FRAMES, seed=7)

        assert relay.alive, relay.stderr()[-3000:]
        assert report.frames == FRAMES
        assert report.problems() == [], report.outcomes
        assert report.logged_in == FRAMES // 2
        # Every kind of answer was met, logged in and not.
        kinds = {k.split(":")[0] + ":" + k.split(":")[1] for k in report.outcomes}
        assert {"error:malformed", "error:bad_field", "error:unexpected",
                "answer:ingested", "closed:1009"} <= kinds, report.outcomes
        assert "Traceback" not in relay.stderr()

        after = snapshot(relay, store)
        unchanged(before, after)
        added = relay_receipts(relay, store)[len(before["receipts"]):]
        assert {r["status"] for r in added} <= {"rejected"}
        assert {r["error"]["code"] for r in added} <= {
            "bad_signature", "broken_chain", "unknown_device", "conflicting_entry"}

        # An honest device still syncs: its next sale is accepted and numbered 2, and
        # the whole stream, the rejections included, verifies from the start.
        chain.next("sale", sale(*PRODUCT_SALE, shift_client_id=shift.client_id))
        session = await RawSession.open(relay.url, store, chain.device_id, chain.key)
        try:
            ingested = await session.push(chain.entries[-1:])
            assert ingested.heads == {chain.device_id: 3}
            receipts = await session.receipts_until(ingested.receipts_head)
        finally:
            await session.close()
        assert [r[1] for r in invoices(relay, store)] == [1, 2]
        last = [r for r in receipts if r["client_id"] == chain.entries[-1].client_id]
        assert [(r["status"], r.get("invoice_no")) for r in last] == [("accepted", 2)]
        seq, _head, problem = verify_receipts(store_key(relay.data, store, relay.db),
                                              receipts, 0, GENESIS)
        assert (seq, problem) == (ingested.receipts_head, None)

"""A dead or replaced till's open shift: a device enrolled as ``backoffice`` or
``admin`` may record its ``shift_close``, the relay accepts it and the Z report shows
who closed it; a till-role device may not (``foreign_shift``), a shift is closed once
(``shift_closed``) and the dead till's entries in it after the close are refused.  On
both backends, with devices the test plays over the real protocol."""

from __future__ import annotations

import uuid
from typing import Any

from tests.doubles import sale
from tests.relay.processes import Chain, RawSession, RelayProcess, cli_json, on_relay
from tillsync.peer.client import enroll
from tillsync.peer.identity import DeviceKey


async def _device(relay: RelayProcess, store: str, name: str, role: str) -> Chain:
    code = on_relay(relay.data, relay.db, lambda opened: opened.new_code(store, name, role))
    key, device = DeviceKey.generate(), str(uuid.uuid4())
    await enroll(relay.url, code, name, key, device)
    return Chain(key, device)


async def _push(relay: RelayProcess, store: str, chain: Chain, after: int
                ) -> list[dict[str, Any]]:
    """Send the chain's new entries; the store's receipts after position ``after``."""
    session = await RawSession.open(relay.url, store, chain.device_id, chain.key,
                                    receipts_after=after)
    try:
        await session.push(chain.entries)
        return await session.receipts_until(after + len(chain.entries))
    finally:
        chain.entries.clear()
        await session.close()


async def test_a_backoffice_device_closes_a_dead_tills_shift(relay: RelayProcess) -> None:
    store = f"store-{uuid.uuid4().hex[:8]}"
    dead = await _device(relay, store, "Till A", "till")
    office = await _device(relay, store, "Office", "backoffice")
    other = await _device(relay, store, "Till B", "till")
    shift = dead.next("shift_open", {"cashier_id": "ann", "opening_cash": 1000}).client_id
    dead.next("sale", sale(("bread", 2, 320), shift_client_id=shift))
    seen = await _push(relay, store, dead, 0)
    assert [r["status"] for r in seen] == ["accepted", "accepted"]

    # Till A is gone.  Another till may not close its shift ...
    refused = other.next("shift_close", {"open_shift_client_id": shift, "closing_cash": 1})
    [answer] = await _push(relay, store, other, len(seen))
    assert (answer["client_id"], answer["status"], answer["error"]["code"]) == (
        refused.client_id, "rejected", "foreign_shift")
    # ... the back office may, once.
    closed = office.next("shift_close", {"open_shift_client_id": shift, "closing_cash": 1500,
                                         "variance_reason": "till died; drawer counted"})
    again = office.next("shift_close", {"open_shift_client_id": shift, "closing_cash": 1})
    first, second = await _push(relay, store, office, len(seen) + 1)
    assert (first["client_id"], first["status"]) == (closed.client_id, "accepted")
    assert first["shift_server_id"] == seen[0]["server_id"]
    assert (second["client_id"], second["status"], second["error"]["code"]) == (
        again.client_id, "rejected", "shift_closed")
    # A sale Till A still sends in that shift comes too late.
    late = dead.next("sale", sale(("bread", 1, 320), shift_client_id=shift))
    [answer] = await _push(relay, store, dead, len(seen) + 3)
    assert (answer["client_id"], answer["status"], answer["error"]["code"]) == (
        late.client_id, "rejected", "shift_closed")

    where = ["--db", relay.db] if relay.db else ["--data", str(relay.data)]
    [z] = cli_json("report", "shifts", *where, "--store", store)
    assert (z["till"], z["closed_by"], z["closed_by_name"]) == ("Till A", office.device_id,
                                                                 "Office")
    assert (z["opening_cash"], z["cash_sales"], z["expected_cash"], z["counted_cash"],
            z["variance"]) == (1000, 640, 1640, 1500, -140)
    assert z["variance_reason"] == "till died; drawer counted"

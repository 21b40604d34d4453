"""A client without Automerge, as schemas/protocol/README.md ("Without Automerge")
defines it: it says ``doc_empty: false``, never sends ``doc`` and ignores the ``doc``
frames it gets; its sales still go up, are decided against the relay's catalogue and
numbered, and their receipts come back, from the relay and over the LAN.  Its
``client_total`` is computed by the README's rule (each line rounded half up)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.peer.lan_peer import PeerClient, identity_of
from tests.peer.lan_processes import LanTill, wait_until
from tests.relay.processes import (
    Chain,
    RawSession,
    RelayProcess,
    Relays,
    invoices,
    store_key,
)
from tests.relay.test_bad_input import enrolled, new_store
from tillsync.peer.sync.engine import (
    DocMessage,
    Ingested,
    PeerAuthenticated,
    ReceiptsReceived,
    RemoteError,
)
from tillsync.peer.sync.frames import decode
from tillsync.peer.sync.receipts import GENESIS, verify_receipts

LINES = [{"product_id": "bread", "qty": "0.75", "unit_price": 410},
         {"product_id": "cheese", "qty": "0.333", "unit_price": 150},
         {"product_id": "wine", "qty": "1.5", "unit_price": 99, "discount": 9}]
CATALOGUE = [("products", p, {"name": p.title(), "sku": p[:3].upper(), "price": price})
             for p, price in (("bread", 410), ("cheese", 150), ("wine", 99))]


def shift_and_sale(chain: Chain) -> tuple[str, str]:
    """A shift and a sale of LINES with the client_total the README's rule gives."""
    shift = chain.next("shift_open", {"cashier_id": "ann", "opening_cash": 0})
    sale = chain.next("sale", {"lines": LINES, "payments": [{"method": "cash", "amount": 498}],
                               "shift_client_id": shift.client_id, "client_total": 498})
    return shift.client_id, sale.client_id


def with_catalogue(tmp_path: Path, relay: RelayProcess) -> tuple[str, LanTill]:
    """A new store whose back office has put CATALOGUE into the relay's document."""
    store = new_store()
    office = LanTill(tmp_path / "office", "Office")
    office.init(relay, store)
    office.put_many(CATALOGUE)
    office.sync()
    return store, office


def recorded(ws: Any) -> list[bytes]:
    """The frames sent on ``ws`` from now on (its ``send`` wrapped)."""
    sent: list[bytes] = []
    send = ws.send

    async def recording(frame: bytes) -> None:
        sent.append(frame)
        await send(frame)

    ws.send = recording
    return sent


def decided(receipts: list[dict[str, Any]], client_id: str) -> dict[str, Any]:
    [receipt] = [r for r in receipts if r["client_id"] == client_id]
    return receipt


@pytest.mark.slow
async def test_a_client_that_never_sends_doc_syncs_its_sales_with_the_relay(
        tmp_path: Path) -> None:
    with Relays(tmp_path) as relays:
        relay = relays.start()
        store, _office = with_catalogue(tmp_path, relay)
        chain = await enrolled(relay, store)
        _shift, sale = shift_and_sale(chain)

        session = await RawSession.open(relay.url, store, chain.device_id, chain.key)
        sent = recorded(session.ws)
        try:
            ingested = await session.push(chain.entries)
            receipts = await session.receipts_until(ingested.receipts_head)
            await session.quiet(0.3)  # whatever else the relay pushes is ignored
        finally:
            await session.close()
        assert ingested.heads == {chain.device_id: 2}
        assert [decode(f)["t"] for f in sent] == ["entries"]
        assert any(isinstance(e, DocMessage) for e in session.events)  # offered, ignored
        receipt = decided(receipts, sale)
        assert (receipt["status"], receipt["series"], receipt["invoice_no"],
                receipt["total"], receipt["warnings"]) == ("accepted", "INV", 1, 498, [])
        seq, _head, problem = verify_receipts(store_key(relay.data, store), receipts, 0,
                                              GENESIS)
        assert (seq, problem) == (ingested.receipts_head, None)
        assert [(r[1], r[2], r[5]) for r in invoices(relay, store)] == [(1, sale, 498)]


@pytest.mark.slow
def test_a_lan_peer_that_never_sends_doc_gets_its_sales_to_the_relay_and_back(
        tmp_path: Path) -> None:
    with Relays(tmp_path) as relays:
        relay = relays.start()
        store, office = with_catalogue(tmp_path, relay)
        kiosk = LanTill(tmp_path / "kiosk", "Kiosk")  # enrolled; played by the test
        kiosk.init(relay, store, role="till")
        who = identity_of(kiosk.path)
        chain = Chain(who.key, who.device)
        _shift, sale = shift_and_sale(chain)

        async def link() -> tuple[list[bytes], PeerClient, Ingested]:
            client = await PeerClient.dial(office.url, who)
            sent = recorded(client.ws)
            await client.wait_for(lambda e: isinstance(e, PeerAuthenticated))
            client.link.send_have({}, 0)
            client.link.send_entries(chain.entries)
            await client.flush()
            ingested = await client.wait_for(lambda e: isinstance(e, Ingested))
            assert isinstance(ingested, Ingested)
            # The office uploads the kiosk's entries and forwards the relay's receipts.
            await client.wait_for(lambda e: isinstance(e, ReceiptsReceived)
                                  and any(r["client_id"] == sale for r in e.receipts
                                          if r.get("server_seq") is not None), timeout=60)
            await client.close()
            return sent, client, ingested

        office.start([], relay=True)
        try:
            sent, client, ingested = asyncio.run(link())
        finally:
            office.stop()
        assert ingested.heads[who.device] == 2
        assert {decode(f)["t"] for f in sent} == {"auth", "have", "entries"}
        assert not [e for e in client.events if isinstance(e, RemoteError)]
        receipts = [r for e in client.events if isinstance(e, ReceiptsReceived)
                    for r in e.receipts]
        receipt = decided(receipts, sale)
        assert (receipt["status"], receipt["invoice_no"], receipt["total"],
                receipt["warnings"]) == ("accepted", 1, 498, [])
        seq, _head, problem = verify_receipts(who.issuer, receipts, 0, GENESIS)
        assert problem is None and seq >= receipt["server_seq"]
        wait_until(lambda: invoices(relay, store), "the sale at the relay")
        assert [(r[1], r[2], r[5]) for r in invoices(relay, store)] == [(1, sale, 498)]

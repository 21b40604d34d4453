"""Attacks on the relay's trust, against a running relay process (both backends).

Each case shows the refusal (an error frame with a stable code, or a rejected receipt),
that the relay logged it, and that nothing it had stored changed.  Forged signatures,
tampered chains, unknown devices and used codes are in ``test_bad_input.py``; a stolen
till end to end (relay and LAN) is in ``tests/peer/test_revocation.py``.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from peer.client import SyncError, enroll
from peer.identity import DeviceKey
from peer.sync.engine import ClientLink
from peer.sync.frames import PROTOCOL_VERSION, TRANSPORT_MAX
from relay.server import Relay
from relay.storage.sqlite import SCHEMA_VERSION as SQLITE_SCHEMA_VERSION
from tests.doubles import sale
from tests.relay.processes import (
    Chain,
    RawSession,
    RelayProcess,
    Relays,
    in_thread,
    query,
    quick_code,
    raw_exchange,
    snapshot,
)
from tests.relay.test_bad_input import frame, new_store, selling, still_serving, unchanged


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory, module_relay_db: str | None
          ) -> Iterator[RelayProcess]:
    with Relays(tmp_path_factory.mktemp("trust"), module_relay_db) as relays:
        yield relays.start()


def devices(relay: RelayProcess) -> list[tuple[object, ...]]:
    return query(relay, "SELECT store, device_id, public_key, revoked_at FROM devices "
                        "ORDER BY store, device_id")


def code_with(relay: RelayProcess, store: str, ttl: timedelta) -> str:
    async def make() -> str:
        opened = await Relay.open(relay.data, relay.db)
        try:
            return await opened.new_code(store, "Till E", ttl=ttl)
        finally:
            await opened.close()
    return in_thread(make)


def revoke(relay: RelayProcess, store: str, device: str) -> int:
    async def go() -> int:
        opened = await Relay.open(relay.data, relay.db)
        try:
            row = await opened.revoke(store, device)
        finally:
            await opened.close()
        assert row.revoked_upto is not None
        return row.revoked_upto
    return in_thread(go)


async def test_an_expired_code_is_refused_and_enrolls_nothing(relay: RelayProcess) -> None:
    code = code_with(relay, new_store(), timedelta(seconds=-1))
    before = devices(relay)
    with pytest.raises(SyncError) as refused:
        await enroll(relay.url, code, "Till E", DeviceKey.generate(), str(uuid.uuid4()))
    assert refused.value.code == "bad_code" and "expired" in str(refused.value)
    assert relay.wait_log("enrollment refused: the enrollment code expired")
    assert devices(relay) == before
    await still_serving(relay)


async def test_a_used_code_is_refused_saying_so(relay: RelayProcess) -> None:
    store = new_store()
    code = quick_code(relay, store, "Till U")
    await enroll(relay.url, code, "Till U", DeviceKey.generate(), str(uuid.uuid4()))
    before = devices(relay)
    with pytest.raises(SyncError) as refused:
        await enroll(relay.url, f"  {code.lower()} ", "Till U2", DeviceKey.generate(),
                     str(uuid.uuid4()))
    assert refused.value.code == "bad_code" and "used already" in str(refused.value)
    assert devices(relay) == before


async def test_a_replayed_auth_is_refused(relay: RelayProcess) -> None:
    """Someone who recorded a device's whole handshake cannot replay it: the relay's
    nonce is new on every link, so the recorded signature is over another transcript."""
    store, chain, session = await selling(relay)
    await session.close()
    before = snapshot(relay, store)
    link = ClientLink(store=store, device=chain.device_id, key=chain.key, nonce=os.urandom(32))
    link.start()
    [recorded_hello] = link.data_to_send()
    async with connect(relay.url, max_size=TRANSPORT_MAX, compression=None) as ws:
        await ws.send(recorded_hello)
        link.receive_data(await ws.recv())  # the challenge
        [recorded_auth] = link.data_to_send()
        await ws.send(recorded_auth)
        await ws.recv()  # welcome: the genuine link worked
    received, closed = await raw_exchange(relay.url, [recorded_hello, recorded_auth])
    assert [(m["t"], m.get("code")) for m in received] == [("challenge", None),
                                                           ("error", "auth_failed")]
    assert closed
    assert relay.wait_log("the device's signature does not verify")
    unchanged(before, snapshot(relay, store))


async def test_a_device_naming_another_store_is_refused(relay: RelayProcess) -> None:
    """A device of store A says it is in store B (whose data it wants): unknown there."""
    store_a, chain, session = await selling(relay)
    await session.close()
    store_b, _, other = await selling(relay)
    await other.close()
    before = snapshot(relay, store_b)
    hello = frame(t="hello", v=PROTOCOL_VERSION, store=store_b, device=chain.device_id,
                  nonce=os.urandom(32), receipts_after=0, doc_empty=True)
    received, closed = await raw_exchange(relay.url, [hello])
    assert [(m["t"], m.get("code")) for m in received] == [("error", "unknown_device")]
    assert closed
    assert relay.wait_log(f"unknown device {chain.device_id} of store {store_b}")
    unchanged(before, snapshot(relay, store_b))


async def test_a_revoked_device_cannot_connect_and_its_later_entries_are_refused(
    relay: RelayProcess,
) -> None:
    store, thief, session = await selling(relay)  # entries 1 and 2 are in
    await session.close()
    honest = Chain(DeviceKey.generate(), str(uuid.uuid4()))
    done = await enroll(relay.url, quick_code(relay, store, "Till H"), "Till H", honest.key,
                        honest.device_id)
    assert done.store == store
    assert revoke(relay, store, thief.device_id) == 2
    assert revoke(relay, store, thief.device_id) == 2  # again: the same, unchanged
    before = snapshot(relay, store)

    # The device itself: refused at hello, with a reason, and logged.
    received, closed = await raw_exchange(relay.url, [frame(
        t="hello", v=PROTOCOL_VERSION, store=store, device=thief.device_id,
        nonce=os.urandom(32), receipts_after=0, doc_empty=False)])
    assert [(m["t"], m.get("code")) for m in received] == [("error", "revoked")]
    assert "revoked" in received[0]["message"] and closed
    assert relay.wait_log(f"revoked device {thief.device_id}")

    # Its entries forwarded by an honest till: the ones the relay held stay (duplicates,
    # skipped), a new one is rejected 'revoked' and kept out of the chain.
    late = thief.next("sale", sale(("bread", 1, 320),
                                   shift_client_id=thief.entries[0].client_id))
    forwarder = await RawSession.open(relay.url, store, honest.device_id, honest.key)
    try:
        assert len(forwarder.ready.revoked if forwarder.ready else []) == 1
        ingested = await forwarder.push(thief.entries)
        assert ingested.heads == {thief.device_id: 2}
        receipts = await forwarder.receipts_until(ingested.receipts_head)
    finally:
        await forwarder.close()
    mine = [r for r in receipts if r["client_id"] == late.client_id]
    assert [(r["status"], r["error"]["code"]) for r in mine] == [("rejected", "revoked")]
    after = snapshot(relay, store)
    unchanged(before, after)
    assert len(after["receipts"]) == len(before["receipts"]) + 1


async def test_a_schema_1_sqlite_relay_database_is_migrated_on_open(tmp_path: Path) -> None:
    relay = await Relay.open(tmp_path)
    await relay.close()
    conn = sqlite3.connect(tmp_path / "relay.db")
    conn.executescript(  # what schema 1 lacks: added by versions 2, 3 and 4
        "ALTER TABLE devices DROP COLUMN revoked_upto; DROP TABLE admin_tokens; "
        "DROP TABLE tally_sales; DROP TABLE tally_products; DROP TABLE tally_shifts; "
        "DROP TABLE tally_cash; DROP TABLE tally_series; DROP INDEX invoices_by_time; "
        "DROP TRIGGER invoices_append_only_update; DROP TRIGGER invoices_append_only_delete; "
        "ALTER TABLE prices DROP COLUMN at; "
        "UPDATE meta SET value = '1' WHERE key = 'schema_version';")
    conn.close()
    relay = await Relay.open(tmp_path)
    try:
        assert await relay.storage.revocations("any") == []
    finally:
        await relay.close()
    conn = sqlite3.connect(tmp_path / "relay.db")
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall() \
        == [(str(SQLITE_SCHEMA_VERSION),)]
    conn.close()

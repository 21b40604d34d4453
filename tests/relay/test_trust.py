"""Attacks on the relay's trust, against a running relay process (both backends).

Each case shows the refusal (an error frame with a stable code, or a rejected receipt),
that the relay logged it, and that nothing it had stored changed.  Forged signatures,
tampered chains, unknown devices and used codes are in ``test_bad_input.py``; a stolen
till end to end (relay and LAN) is in ``tests/peer/test_revocation.py``.
"""

from __future__ import annotations

import os
import random
import sqlite3
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from tests.doubles import sale
from tests.relay.databases import (
    REJECTED_BEFORE_SCHEMA_7,
    TALLIES_BEFORE_SCHEMA_8,
    invoices_before_schema_6,
)
from tests.relay.processes import (
    Chain,
    RawSession,
    RelayProcess,
    Relays,
    TillDir,
    cli_json,
    in_thread,
    on_relay,
    query,
    quick_code,
    raw_exchange,
    relay_receipts,
    snapshot,
    store_key,
)
from tests.relay.test_acceptance import _record_sales
from tests.relay.test_bad_input import frame, new_store, selling, still_serving, unchanged
from tillsync.peer.cert import Certificate, CertificateError
from tillsync.peer.client import SyncError, enroll
from tillsync.peer.identity import DeviceKey
from tillsync.peer.sync.engine import ClientLink
from tillsync.peer.sync.frames import PROTOCOL_VERSION, TRANSPORT_MAX
from tillsync.peer.sync.receipts import verify_receipts
from tillsync.relay.server import Relay, code_hash
from tillsync.relay.storage.sqlite import SCHEMA_VERSION as SQLITE_SCHEMA_VERSION
from tillsync.relay.storekeys import StoreKeyError


def devices(relay: RelayProcess) -> list[tuple[object, ...]]:
    return query(relay, "SELECT store, device_id, public_key, revoked_at FROM devices "
                        "ORDER BY store, device_id")


def code_with(relay: RelayProcess, store: str, ttl: timedelta) -> str:
    return on_relay(relay.data, relay.db,
                    lambda opened: opened.new_code(store, "Till E", ttl=ttl))


def revoke(relay: RelayProcess, store: str, device: str) -> int:
    row = on_relay(relay.data, relay.db, lambda opened: opened.revoke(store, device))
    assert row.revoked_upto is not None
    return row.revoked_upto


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
    conn.executescript(  # what schema 1 lacks: added by versions 2 to 5
        "ALTER TABLE devices DROP COLUMN revoked_upto; DROP TABLE admin_tokens; "
        "DROP TABLE tally_sales; DROP TABLE tally_products; DROP TABLE tally_shifts; "
        "DROP TABLE tally_cash; DROP TABLE tally_series; DROP INDEX invoices_by_time; "
        "DROP TRIGGER invoices_append_only_update; DROP TRIGGER invoices_append_only_delete; "
        "ALTER TABLE prices DROP COLUMN at; DROP TABLE store_keys; "
        f"{REJECTED_BEFORE_SCHEMA_7}; {'; '.join(TALLIES_BEFORE_SCHEMA_8)}; "
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


# -- store keys -------------------------------------------------------------------------


def enroll_json(relay: RelayProcess, store: str, name: str) -> dict[str, Any]:
    out: dict[str, Any] = cli_json("relay", "enroll", "--data", str(relay.data), "--store",
                                   store, "--name", name,
                                   *(("--db", relay.db) if relay.db else ()))
    return out


async def test_each_store_signs_with_its_own_key_sealed_under_the_relays(
    relay: RelayProcess, tmp_path: Path,
) -> None:
    relay_public = DeviceKey.read(relay.data, "relay.key").public_bytes
    keys, certs = {}, {}
    for store in (new_store(), new_store()):
        made = enroll_json(relay, store, "Till K")
        done = await enroll(relay.url, made["code"], "Till K", DeviceKey.generate(),
                            str(uuid.uuid4()))
        # The key the till pinned is the one `relay enroll` printed, and it stays the
        # store's: a second code does not make another.
        assert done.relay_key.hex() == made["store_key"] == \
            enroll_json(relay, store, "Till K2")["store_key"]
        keys[store], certs[store] = done.relay_key, done.cert
    (a, key_a), (b, key_b) = keys.items()
    assert len({key_a, key_b, relay_public}) == 3
    assert Certificate.load(certs[a], key_a, store=a).store == a
    with pytest.raises(CertificateError):  # a certificate of store A means nothing in B
        Certificate.load(certs[a], key_b)

    # What a device of a store sees signed at the relay is signed by the store's key:
    # the handshake (ClientLink checks it against the key pinned), the certificate in
    # welcome, and the receipts of its sale.
    store, chain, session = await selling(relay)
    await session.close()
    pinned = store_key(relay.data, store, relay.db)
    assert pinned not in (key_a, key_b, relay_public)
    again = await RawSession.open(relay.url, store, chain.device_id, chain.key)
    await again.close()
    assert again.ready is not None
    assert Certificate.load(again.ready.cert, pinned, store=store).device == chain.device_id
    stream = relay_receipts(relay, store)
    good, _, problem = verify_receipts(pinned, stream, 0, bytes(32))
    assert (good, problem) == (2, None)
    assert verify_receipts(relay_public, stream, 0, bytes(32))[2] is not None

    # The database holds the store key sealed, not the key itself; a relay with another
    # relay.key on the same database cannot sign for the store, and says why.
    [(public, sealed)] = query(relay, "SELECT public_key, sealed FROM store_keys "
                                      "WHERE store = ?", (a,))
    assert bytes(public) == key_a and len(bytes(sealed)) == 12 + 32 + 16
    stranger = tmp_path / "stranger"
    if relay.db is None:  # SQLite: a copy of the database beside another relay.key
        stranger.mkdir(mode=0o700)
        with sqlite3.connect(relay.data / "relay.db") as source, \
                sqlite3.connect(stranger / "relay.db") as copy:
            source.backup(copy)

    async def sign_for_a() -> str:
        opened = await Relay.open(stranger, relay.db)
        try:
            assert opened.key.public_bytes != relay_public
            with pytest.raises(StoreKeyError) as refused:
                await opened.store_key(a)
            return str(refused.value)
        finally:
            await opened.close()
    assert "does not open with this relay's key" in in_thread(sign_for_a)


def test_a_store_made_before_store_keys_keeps_the_relays_key_after_the_upgrade(
    tmp_path: Path, relay_db: str | None,
) -> None:
    """Tills of a store from before store keys pinned the relay's own key: the upgrade
    (schema 5) leaves that store signing with it, so they keep working; a store made
    after it gets its own key."""
    old = RelayProcess(tmp_path / "relay" / "data", tmp_path / "relay" / "logs", db=relay_db)
    store, code = new_store(), "OLD-CODE-1"

    async def before_store_keys() -> None:  # a code as a relay before schema 5 made it
        opened = await Relay.open(old.data, relay_db)
        try:
            await opened.storage.add_code(store, code_hash(code), "Old till", "admin",
                                          "2099-01-01T00:00:00Z")
        finally:
            await opened.close()
    in_thread(before_store_keys)
    for sql in ("DROP TABLE store_keys", *invoices_before_schema_6(bool(relay_db)),
                REJECTED_BEFORE_SCHEMA_7, *TALLIES_BEFORE_SCHEMA_8,
                "DELETE FROM schema_version WHERE version >= 5" if relay_db else
                "UPDATE meta SET value = '4' WHERE key = 'schema_version'"):
        query(old, sql)

    relay_public = DeviceKey.read(old.data, "relay.key").public_bytes
    with Relays(tmp_path, relay_db) as relays:
        relay = relays.start(data=old.data)  # migrates to the latest schema on start
        till = TillDir(tmp_path / "till", "Old till")
        cli_json("peer", "init", str(till.path), "--name", till.name, "--relay", relay.url,
                 "--code", code)
        assert till.status()["store_key"] == relay_public.hex()
        assert enroll_json(relay, store, "Another till")["store_key"] == relay_public.hex()
        in_thread(lambda: _record_sales(till.path, None, 2, random.Random(5)))
        report = till.sync_json()
        assert report["pending"] == 0, report
        assert sorted(r["invoice_no"] for r in till.receipts() if r.get("invoice_no")) \
            == [1, 2]
        assert enroll_json(relay, new_store(), "New till")["store_key"] != relay_public.hex()

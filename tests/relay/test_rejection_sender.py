"""Who sent a rejected entry: device C, enrolled in the store, forges entries under
device A's id and sends them over its own link.  The relay keeps both the entry's
``device_id`` (A) and the sender (C, the authenticated device of the link), and
``report devices`` counts the rejections against C, not against A.  On both backends,
and across the upgrade of a database from before senders were recorded."""

from __future__ import annotations

import uuid
from typing import Any

from tests.relay.databases import REJECTED_BEFORE_SCHEMA_7, TALLIES_BEFORE_SCHEMA_8
from tests.relay.processes import (
    Chain,
    RawSession,
    RelayProcess,
    cli_json,
    query,
    run_cli,
)
from tests.relay.test_bad_input import enrolled, selling
from tillsync.peer.identity import DeviceKey
from tillsync.relay.storage.postgres import SCHEMA_VERSION as PG_SCHEMA_VERSION
from tillsync.relay.storage.sqlite import SCHEMA_VERSION as SQLITE_SCHEMA_VERSION


def devices(relay: RelayProcess, store: str) -> dict[str, dict[str, Any]]:
    where = ["--db", relay.db] if relay.db else ["--data", str(relay.data)]
    return {d["device_id"]: d for d in cli_json("report", "devices", *where, "--store", store)}


def senders(relay: RelayProcess, store: str) -> list[tuple[str, str, str | None]]:
    return [tuple(r) for r in query(relay, "SELECT device_id, code, sent_by FROM rejected "
                                           "WHERE store = ? ORDER BY seq", (store,))]


async def forge(relay: RelayProcess, store: str, victim: Chain) -> Chain:
    """Device C sends, over its own link, A's seq 1 and 2 with other content (signed
    with C's key) and a seq 3 under A's id that C signed: three rejections."""
    forger = await enrolled(relay, store)
    fake = Chain(forger.key, victim.device_id)
    fake.next("shift_open", {"cashier_id": "eve", "opening_cash": 1})
    fake.next("shift_open", {"cashier_id": "eve", "opening_cash": 2})
    fake.prev, fake.seq = victim.prev, victim.seq
    fake.next("shift_open", {"cashier_id": "eve", "opening_cash": 3})
    session = await RawSession.open(relay.url, store, forger.device_id, forger.key)
    try:
        await session.push(fake.entries)
    finally:
        await session.close()
    return forger


async def test_a_forged_entrys_rejection_counts_against_its_sender(
        relay: RelayProcess) -> None:
    store, victim, session = await selling(relay)  # A: a shift and a sale, accepted
    await session.close()
    forger = await forge(relay, store, victim)
    a, c = victim.device_id, forger.device_id
    assert senders(relay, store) == [(a, "conflicting_entry", c), (a, "conflicting_entry", c),
                                     (a, "bad_signature", c)]
    report = devices(relay, store)
    assert (report[a]["rejected"], report[c]["rejected"]) == (0, 3)
    assert report[a]["last_rejection"] is None
    assert report[c]["last_rejection"].split(":")[0] in ("conflicting_entry", "bad_signature")
    assert (report[a]["rejected_in_its_name"], report[c]["rejected_in_its_name"]) == (3, 0)


async def test_a_rejection_kept_from_before_senders_counts_against_the_entrys_device(
        relay: RelayProcess) -> None:
    """A database of the schema before senders were recorded: its rejections have no
    sender after the upgrade and count against the device the entry names."""
    store = f"store-{uuid.uuid4().hex[:8]}"
    device = await enrolled(relay, store)
    stranger = Chain(DeviceKey.generate(), str(uuid.uuid4()))
    stranger.next("shift_open", {"cashier_id": "eve", "opening_cash": 0})
    session = await RawSession.open(relay.url, store, device.device_id, device.key)
    try:
        await session.push(stranger.entries)  # unknown_device, sent by the enrolled one
    finally:
        await session.close()
    relay.kill()
    try:
        for sql in [REJECTED_BEFORE_SCHEMA_7, *TALLIES_BEFORE_SCHEMA_8]:
            query(relay, sql)
        query(relay, "DELETE FROM schema_version WHERE version >= 7" if relay.db else
              "UPDATE meta SET value = '6' WHERE key = 'schema_version'")
        where = ["--db", relay.db] if relay.db else ["--data", str(relay.data)]
        version = PG_SCHEMA_VERSION if relay.db else SQLITE_SCHEMA_VERSION
        assert f"schema at version {version}" in run_cli("relay", "migrate", *where).stdout
        assert senders(relay, store) == [(stranger.device_id, "unknown_device", None)]
        report = devices(relay, store)
        assert (report[device.device_id]["rejected"],
                report[device.device_id]["rejected_in_its_name"]) == (0, 0)
    finally:
        relay.start()

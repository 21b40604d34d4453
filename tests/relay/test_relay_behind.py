"""A till that holds more of the receipt stream than its relay is told so, and says so.

The relay answers a ``hello`` whose ``receipts_after`` is beyond its stream position with
a non-fatal ``relay_behind`` error right after ``welcome`` (the link goes on); the
reference till ends its round before pushing anything, ``peer sync`` exits non-zero
saying what the operator must do, ``peer status`` shows it, and the till keeps every
receipt it holds.  Real relay processes; the lost data is a relay restored from a copy
of its folder taken before the till's last sync."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.relay.processes import (
    RawSession,
    RelayProcess,
    Relays,
    TillDir,
    query,
    stream_position,
)
from tests.relay.test_bad_input import new_store, selling
from tillsync.peer.sync.engine import Ready, RemoteError
from tillsync.peer.sync.receipts import RELAY_BEHIND
from tillsync.schemas.limits import INTEGER_MAX

SHIFT = {"cashier_id": "ann", "opening_cash": 0}
CASHIER = {"name": "Ann", "role": "cashier", "pin": "1234"}
EXPENSE = {"amount": 500, "category": "cleaning", "description": "soap", "method": "cash"}


async def test_receipts_after_beyond_the_relays_head_gets_relay_behind(
        tmp_path: Path, relay_db: str | None) -> None:
    with Relays(tmp_path, relay_db) as relays:
        relay = relays.start()
        store, chain, session = await selling(relay)  # the stream is at 2
        await session.close()
        # head + 1, then the largest integer a frame may carry (the head is 3 then)
        for beyond in (1, INTEGER_MAX - 3):
            head = stream_position(relay, store)
            after = head + beyond
            session = await RawSession.open(relay.url, store, chain.device_id, chain.key,
                                            receipts_after=after)
            try:
                assert isinstance(session.ready, Ready) and session.ready.receipts_head == head
                error = await session.wait_for(lambda e: isinstance(e, RemoteError))
                assert isinstance(error, RemoteError)
                assert (error.code, error.fatal) == (RELAY_BEHIND, False)
                assert f"ends at {head} but this device holds receipts up to {after}" \
                    in error.message
                # Not fatal: the link goes on (a new entry is taken and answered).
                entry = chain.next("expense", EXPENSE)
                ingested = await session.push([entry])
                assert ingested.heads == {chain.device_id: chain.seq}
            finally:
                await session.close()
        assert after == INTEGER_MAX
        # Up to the relay's head exactly is fine: no error.
        session = await RawSession.open(relay.url, store, chain.device_id, chain.key,
                                        receipts_after=stream_position(relay, store))
        try:
            assert not [e for e in await session.quiet(0.3) if isinstance(e, RemoteError)]
        finally:
            await session.close()
        assert f"holds receipts up to {INTEGER_MAX}, the relay only up to 3" in relay.stderr()


def restore(relay: RelayProcess, backup: Path) -> None:
    """The relay's folder put back as it was when ``backup`` was taken (relay stopped)."""
    relay.kill()
    shutil.rmtree(relay.data)
    shutil.copytree(backup, relay.data)
    relay.start()  # on the same port: the till's enrolled url


def test_a_till_whose_relay_lost_receipts_says_so_and_keeps_its_own(tmp_path: Path) -> None:
    with Relays(tmp_path) as relays:
        relay = relays.start()
        store = new_store()
        till = TillDir(tmp_path / "till", "Till 1")
        till.init(relay, store)
        till.put_many([("cashiers", "ann", CASHIER)])
        till.record("shift_open", SHIFT)
        relay.kill()
        backup = tmp_path / "backup"
        shutil.copytree(relay.data, backup)  # the relay's backup: nothing of the till yet
        relay.start()
        assert till.sync_json()["receipts"] == 1
        till.record("expense", EXPENSE)
        held = till.receipts()
        restore(relay, backup)

        result = till.sync(check=False)
        assert result.returncode == 4, result
        assert "the relay's receipt stream ends at 0 but this device holds receipts up to 1" \
            in result.stderr
        assert "restore the relay's backup" in result.stderr
        assert "restore the relay's backup" in till.status()["last_error"]
        assert till.receipts() == held  # nothing lost
        # Nothing was pushed to the relay that lost data: it numbers nothing anew.
        assert query(relay, "SELECT count(*) FROM entries WHERE store = ?", (store,)) == [(0,)]

"""A stolen till is revoked: its later entries are refused everywhere (real processes).

Three tills of one store: ``one`` reaches the relay, ``two`` only the LAN, ``stolen`` is
taken out of the shop.  The relay's revocation travels relay -> one -> two (LAN); the
stolen till can then reach neither the relay nor a till, and an entry it made after the
revocation is refused even when an honest till forwards it; the entries the relay held
at revocation time stay valid everywhere.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from tests.peer.lan_processes import LanTill, wait_until
from tests.peer.test_lan_bad_input import entries_of as held_entries
from tests.peer.test_lan_bad_input import held
from tests.relay.processes import RawSession, Relays, cli_json, query, run_cli
from tillsync.peer.log import Entry

STORE = "shop-revoke"
BREAD = ("products", "bread", {"name": "Bread", "sku": "B1", "price": 320})
CASHIER = ("cashiers", "ann", {"name": "Ann", "role": "cashier", "pin": "1234"})


def sale(shift: str) -> dict[str, object]:
    return {"lines": [{"product_id": "bread", "qty": 1, "unit_price": 320}],
            "payments": [{"method": "cash", "amount": 320}], "shift_client_id": shift}


def entries_of(till: LanTill, device: str) -> list[Entry]:
    return [e for e in held_entries(till.path) if e.device_id == device]


@pytest.mark.slow
def test_a_stolen_tills_entries_after_its_revocation_are_refused_everywhere(
    tmp_path: Path,
) -> None:
    with Relays(tmp_path) as relays:
        relay = relays.start()
        one, two, stolen = (LanTill(tmp_path / n, n.title()) for n in ("one", "two", "stolen"))
        for till in (one, two, stolen):
            till.init(relay, STORE)
        one.put_many([BREAD, CASHIER])
        for till in (one, two, stolen):
            till.sync()
        thief = stolen.status()["device_id"]
        try:
            # Before the theft: the till sells, the relay and till one get its entries.
            one.start([], relay=True)
            stolen.start([one], relay=True)
            shift = str(uuid.uuid4())
            stolen.record("shift_open", {"cashier_id": "ann", "opening_cash": 0}, shift)
            before = stolen.record("sale", sale(shift))["client_id"]
            wait_until(lambda: query(relay, "SELECT max(seq) FROM entries WHERE store = ? AND "
                                     "device_id = ?", (STORE, thief)) == [(2,)],
                       "the relay to hold the stolen till's two entries")
            wait_until(lambda: held(one, thief) == 2, "till one to hold them")
            stolen.kill()

            revoked = cli_json("relay", "revoke", "--data", str(relay.data), "--store", STORE,
                               "--device", "Stolen", "--json")
            assert (revoked["device"], revoked["upto"]) == (thief, 2)
            after = stolen.record("sale", sale(shift))["client_id"]  # the thief's sale

            # The revocation reaches till one from the relay, till two over the LAN only.
            wait_until(lambda: one.status()["revoked"] == {thief: 2}, "till one to learn it")
            two.start([one], relay=False)
            wait_until(lambda: two.status()["revoked"] == {thief: 2},
                       "till two to learn it over the LAN")
            wait_until(lambda: held(two, thief) == 2,
                       "till two to get the entries made before the revocation")

            # The relay refuses the stolen till itself, and says so.
            refused = stolen.sync(check=False)
            assert refused.returncode == 4 and "revoked" in refused.stderr
            assert relay.wait_log(f"revoked device {thief}")

            # Both tills refuse its LAN links.
            stolen.start([one, two], relay=False)
            for till in (one, two):
                wait_until(lambda t=till: "has been revoked" in t.log(),
                           f"{till.name} to refuse the stolen till's link")
            assert all(not p["connected"] for t in (one, two) for p in t.lan()["peers"]
                       if p["device_id"] == thief)
            stolen.kill()

            # An honest till forwarding the thief's later entry: refused by the relay.
            [late] = [e for e in entries_of(stolen, thief) if e.seq == 3]

            async def forward() -> list[dict[str, object]]:
                session = await RawSession.open(relay.url, STORE, two.status()["device_id"],
                                                two.key)
                try:
                    ingested = await session.push([late])
                    return await session.receipts_until(ingested.receipts_head)
                finally:
                    await session.close()
            receipts = [r for r in asyncio.run(forward()) if r["client_id"] == after]
            assert [(r["status"], r["error"]["code"]) for r in receipts] == [  # type: ignore[index]
                ("rejected", "revoked")]

            # Nothing after the revocation is stored anywhere; everything before stays.
            assert query(relay, "SELECT seq FROM entries WHERE store = ? AND device_id = ? "
                         "ORDER BY seq", (STORE, thief)) == [(1,), (2,)]
            for till in (one, two):
                assert [e.seq for e in entries_of(till, thief)] == [1, 2]
            accepted = {r["client_id"]: r["status"] for r in one.receipts()}
            assert accepted[before] == "accepted"
        finally:
            for till in (one, two, stolen):
                till.stop()


def test_revoking_an_unknown_device_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    with Relays(tmp_path) as relays:
        relay = relays.start()
        result = run_cli("relay", "revoke", "--data", str(relay.data), "--store", STORE,
                         "--device", "nobody", check=False)
        assert result.returncode == 2 and "no device" in result.stderr
        assert query(relay, "SELECT count(*) FROM devices WHERE revoked_at IS NOT NULL") \
            == [(0,)]

"""Document changes on a LAN that is not a full mesh (real processes, relay down).

A till sends its own edits to every till it is linked to; changes it got from another
peer it only announces (the document's heads alone), and a peer that lacks them asks
for them.  Here Till 1 and Till 3 are each linked to Till 2 alone, so every edit
between them must go through Till 2 that way.
"""

from __future__ import annotations

from pathlib import Path

import automerge.core as am
import pytest

from tests.peer.lan_processes import LanTill, assert_no_traceback, wait_until
from tests.relay.processes import Relays
from tillsync.peer.lan.docsync import ANNOUNCE_DELAY, DocSync, in_sync_message
from tillsync.peer.master.document import MasterData, heads_only, message_heads

STORE = "shop-lan-chain"
BREAD = ("products", "bread", {"name": "Bread", "sku": "B1", "price": 320})


def test_a_heads_message_states_the_heads_and_nothing_else() -> None:
    doc = MasterData.new(b"\x01" * 16)
    doc.put(*BREAD)
    announced = doc.heads_message()
    assert heads_only(announced)
    assert message_heads(announced) == set(doc.heads())
    full = doc.sync_message(am.SyncState())
    assert full is not None and not heads_only(full)
    assert message_heads(full) == set(doc.heads())


def test_a_link_announces_changes_from_elsewhere_only_when_due_and_not_held() -> None:
    mine, other = MasterData.new(b"\x01" * 16), MasterData.new(b"\x02" * 16)
    link = DocSync(mine, first=True)
    state = am.SyncState()
    first, _ = link.outgoing(mine, state, now=0.0)  # owed at the start
    assert first is not None and not heads_only(first)
    assert link.outgoing(mine, state, now=0.0) == (None, None)

    other.put(*BREAD)  # a change that reaches this till from another link
    mine.apply(other.save())
    assert set(mine.heads()) == set(other.heads())
    message, wake_at = link.outgoing(mine, state, now=1.0)
    assert message is None and wake_at == 1.0 + ANNOUNCE_DELAY  # not at once
    message, _ = link.outgoing(mine, state, now=wake_at)
    assert message is not None and heads_only(message)
    assert message_heads(message) == set(mine.heads())
    assert link.outgoing(mine, state, now=9.0) == (None, None)  # stated once

    # A peer stating heads this till holds stands for the full message saying it holds
    # those and nothing more (applied, not answered); one stating heads this till
    # lacks is applied as it came, and answered.
    held = link.received(other.heads_message(), mine)
    assert held == in_sync_message(list(mine.heads())) and not heads_only(held)
    link.applied()
    assert link.outgoing(mine, state, now=9.0) == (None, None)
    other.put("products", "bread", {"price": 400})
    lacking = other.heads_message()
    assert link.received(lacking, mine) == lacking
    # An edit made here goes out at once, as a full sync message.
    mine.put("products", "bread", {"price": 410})
    message, wake_at = link.outgoing(mine, state, now=9.0)
    assert message is not None and not heads_only(message) and wake_at is None


def price_on(till: LanTill) -> object:
    return (till.get("products", "bread") or {}).get("price")


@pytest.mark.slow
def test_edits_cross_a_till_between_two_tills_that_are_not_linked(tmp_path: Path) -> None:
    with Relays(tmp_path) as relays:
        relay = relays.start()
        tills = [LanTill(tmp_path / f"till{i}", f"Till {i}") for i in (1, 2, 3)]
        for till in tills:
            till.init(relay, STORE)
        tills[0].put_many([BREAD])
        for till in tills:
            till.sync()
        relay.kill()

        one, two, three = tills
        try:
            two.start([], relay=False)
            one.start([two], relay=False)
            three.start([two], relay=False)
            wait_until(lambda: sum(p["connected"] for p in two.lan()["peers"]) == 2,
                       "Till 2 to link with Till 1 and Till 3")
            assert sum(p["connected"] for p in one.lan()["peers"]) == 1
            assert sum(p["connected"] for p in three.lan()["peers"]) == 1

            for price in (330, 340, 350):  # one end to the other, several times
                one.put("products", "bread", {"price": price})
                wait_until(lambda p=price: price_on(three) == p, f"price {price} on Till 3")
            three.put("products", "bread", {"price": 360})  # and back
            wait_until(lambda: price_on(one) == 360, "price 360 on Till 1")
            # Edits at both ends at once merge to the same value everywhere.
            one.put("products", "bread", {"name": "Rye bread"})
            three.put("products", "bread", {"sku": "R1"})
            for till in tills:
                wait_until(lambda t=till: (t.get("products", "bread") or {}).get("name")
                           == "Rye bread" and (t.get("products", "bread") or {}).get("sku")
                           == "R1", f"both edits on {till.name}")
            assert price_on(two) == 360
        finally:
            for till in tills:
                till.stop()
        assert_no_traceback(tills)

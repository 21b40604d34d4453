"""The relay's per-store hub: product facts for ingest follow document changes."""

from __future__ import annotations

import uuid

from tillsync.peer.master import MasterData
from tillsync.relay.documents import StoreHub


async def test_product_facts_are_memoised_until_the_document_changes() -> None:
    till = MasterData.new(uuid.uuid4().bytes)
    till.put("products", "tomato", {"name": "Tomatoes", "sku": "T1", "price": 450})
    hub = StoreHub("shop", MasterData.load(till.save(), uuid.uuid4().bytes))
    assert hub.product("tomato") == {"volatile": False}
    assert hub.product("ghost") is None

    till.put("products", "tomato", {"volatile": True})
    till.put("products", "ghost", {"name": "Ghost", "sku": "G1", "price": 1,
                                   "reorder_level": "3"})
    hub.doc.apply(till.save())
    assert hub.product("tomato") == {"volatile": False}  # memoised: not told yet
    changed = hub.changed
    hub.document_changed()
    assert changed.is_set()
    assert hub.product("tomato") == {"volatile": True}
    assert hub.product("ghost") == {"volatile": False, "reorder_level": "3"}

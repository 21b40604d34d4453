"""The relay's per-store hub: product and customer facts for ingest follow document
changes (deletions included)."""

from __future__ import annotations

import uuid

from tillsync.peer.master import MasterData
from tillsync.relay.documents import StoreHub


async def test_product_facts_are_memoised_until_the_document_changes() -> None:
    till = MasterData.new(uuid.uuid4().bytes)
    till.put("products", "tomato", {"name": "Tomatoes", "sku": "T1", "price": 450})
    hub = StoreHub("shop", MasterData.load(till.save(), uuid.uuid4().bytes))
    assert hub.product("tomato") == {"volatile": False, "active": True}
    assert hub.product("ghost") is None
    assert hub.customer("bob") is None

    till.put("products", "tomato", {"volatile": True})
    till.put("products", "ghost", {"name": "Ghost", "sku": "G1", "price": 1,
                                   "reorder_level": "3"})
    till.put("customers", "bob", {"name": "Bob", "credit_limit": 500})
    hub.doc.apply(till.save())
    assert hub.product("tomato") == {"volatile": False, "active": True}  # memoised
    assert hub.customer("bob") is None  # memoised: not told yet
    changed = hub.changed
    hub.document_changed()
    assert changed.is_set()
    assert hub.product("tomato") == {"volatile": True, "active": True}
    assert hub.product("ghost") == {"volatile": False, "reorder_level": "3", "active": True}
    assert hub.customer("bob") == {"active": True, "credit_limit": 500}
    till.delete("products", "ghost")
    hub.doc.apply(till.save())
    hub.document_changed()
    assert hub.product("ghost") is None

"""The credit report: customers who owe more than their credit limit.

A till refuses an account sale past a customer's limit, judged on the balance it knows;
tills that sold on account to one customer while apart can still take it past the limit
together.  The relay keeps every customer's balance over every till's accepted entries
(``relay/counter_checks.py``, counters ``balance:<id>`` written in the ingest
transaction), so this report reads one row per customer who has ever had a balance.
"""

from __future__ import annotations

from typing import Any

from tillsync.peer.master import MasterData
from tillsync.relay.counter_checks import PREFIX
from tillsync.relay.reports import check_store
from tillsync.relay.storage import RelayStorage


async def over_limit(storage: RelayStorage, store: str) -> list[dict[str, Any]]:
    """Each customer whose balance is above its ``credit_limit``: balance, limit, by how
    much, and its name (None for a customer no longer in the master data)."""
    await check_store(storage, store)
    rows = await storage.read("SELECT name, value FROM counters WHERE store = ? AND "
                              "name LIKE ?", (store, PREFIX + "%"))
    balances = {str(name)[len(PREFIX):]: int(value) for name, value in rows}
    data, _ = await storage.document_at(store)
    customers = MasterData.load(data, bytes(16)).all("customers") if data else {}
    out = []
    for customer_id, balance in sorted(balances.items()):
        record = customers.get(customer_id, {})
        limit = record.get("credit_limit")
        if isinstance(limit, int) and balance > limit:
            out.append({"customer_id": customer_id, "name": record.get("name"),
                        "balance": balance, "credit_limit": limit, "over_by": balance - limit})
    return out

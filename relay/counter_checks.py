"""What the relay notes, never refuses, about the counter's rules (``peer/counter_rules.py``).

A till refuses a sale of an inactive product or customer and an account sale past the
customer's credit limit.  A sale can still reach the relay that breaks them: it was made
before the till knew of the change (a deletion, ``active: false``, a lower limit), or
two tills sold on account to one customer while apart, each within the limit it knew.
What happened at a counter is never dropped, so the relay accepts such a sale and puts
a warning on its receipt:

* ``inactive_product {product_id}``: a line names a product whose record is inactive
  (a deleted product is not in the catalogue: ``unknown_product``, as before);
* ``unknown_customer {customer_id}``: the customer is not in the master data (deleted,
  or never created); ``inactive_customer {customer_id}``: its record is inactive;
* ``credit_limit {customer_id, balance, credit_limit}``: after this entry the customer
  owes ``balance``, above its limit.

The relay keeps every customer's balance (what ``peer.views`` counts: sales on account
minus payments and refunds to the account, over every accepted entry of every till) as a
counter ``balance:<customer id>``, read and written in the ingest transaction like the
invoice counters.  ``tillsync report credit`` lists the customers above their limit.
A relay database from before balances were kept has them set from its stored entries
by a schema migration (``rebuild_balances``: SQLite schema 9, PostgreSQL migration 9).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import msgpack

from tillsync.peer.counter_rules import balance_changes
from tillsync.relay.undo import OutOfRange
from tillsync.schemas.limits import in_range

Customers = Callable[[str], Mapping[str, Any] | None]
PREFIX = "balance:"
Read = Callable[[str, Sequence[object]], Awaitable[list[tuple[Any, ...]]]]
Write = Callable[[str, list[tuple[Any, ...]]], Awaitable[None]]


def customers_named(bodies: Iterable[Mapping[str, Any]]) -> set[str]:
    """The customers whose balance deciding these bodies may change."""
    return {b["customer_id"] for b in bodies if isinstance(b.get("customer_id"), str)}


def record_warnings(kind: str, body: Mapping[str, Any],
                    moves: Sequence[tuple[str, int, Mapping[str, Any] | None]],
                    customers: Customers | None) -> list[dict[str, Any]]:
    """Warnings about the inactive or missing records a sale names (``moves``: its lines'
    products with their catalogue records, as ingest looked them up already)."""
    if kind != "sale":
        return []
    out: list[dict[str, Any]] = []
    for product_id, _, product in moves:
        if product is not None and product.get("active") is False:
            warning = {"code": "inactive_product", "product_id": product_id}
            if warning not in out:
                out.append(warning)
    if customers is not None and "customer_id" in body:
        customer = customers(body["customer_id"])
        if customer is None:
            out.append({"code": "unknown_customer", "customer_id": body["customer_id"]})
        elif customer.get("active") is False:
            out.append({"code": "inactive_customer", "customer_id": body["customer_id"]})
    return out


def new_balances(kind: str, body: Mapping[str, Any], balances: Mapping[str, int]
                 ) -> dict[str, int]:
    """The balances of the customers this entry changes, after it; raises ``OutOfRange``
    before anything changes if one would leave the integer range."""
    after = {}
    for customer_id, delta in balance_changes(kind, body).items():
        value = balances.get(customer_id, 0) + delta
        if not in_range(value):
            raise OutOfRange(f"the balance of customer {customer_id!r} would be {value}, "
                             "outside the integer range")
        after[customer_id] = value
    return after


def credit_warnings(before: Mapping[str, int], after: Mapping[str, int],
                    customers: Customers | None) -> list[dict[str, Any]]:
    """``credit_limit`` for each customer this entry took higher and above its limit."""
    if customers is None:
        return []
    out = []
    for customer_id, balance in sorted(after.items()):
        record = customers(customer_id)
        limit = None if record is None else record.get("credit_limit")
        if isinstance(limit, int) and balance > limit and balance > before.get(customer_id, 0):
            out.append({"code": "credit_limit", "customer_id": customer_id,
                        "balance": balance, "credit_limit": limit})
    return out


# The entries of a store that may change a balance, each counted unless the relay refused
# it for what it says (a ``rejected`` row without the entry's bytes: an entry stored in
# its chain and answered ``rejected``) or it is still waiting.
_BALANCE_ENTRIES = """
SELECT e.kind, e.body FROM entries e
WHERE e.store = ? AND e.kind IN ('sale', 'refund', 'customer_payment')
    AND NOT EXISTS (SELECT 1 FROM rejected r WHERE r.store = e.store
                    AND r.client_id = e.client_id AND r.device_id = e.device_id
                    AND r.seq = e.seq AND length(r.entry) = 0)
    AND NOT EXISTS (SELECT 1 FROM waiting w WHERE w.store = e.store
                    AND w.client_id = e.client_id)
"""


async def rebuild_balances(read: Read, write: Write) -> int:
    """Set every store's ``balance:<id>`` counters to the sum over the entries it holds
    and accepted (the migration for a relay that held account sales before it kept
    balances); returns the number of balances written.  Entries are decoded as ingest
    accepted them, so every sum stays in range."""
    stores = [r[0] for r in await read("SELECT DISTINCT store FROM entries", ())]
    written = 0
    for store in stores:
        balances: dict[str, int] = {}
        for kind, body in await read(_BALANCE_ENTRIES, (store,)):
            for customer_id, delta in balance_changes(
                    kind, msgpack.unpackb(bytes(body), raw=False)).items():
                balances[customer_id] = balances.get(customer_id, 0) + delta
        await write("DELETE FROM counters WHERE store = ? AND name LIKE ?",
                    [(store, PREFIX + "%")])
        rows = [(store, PREFIX + c, v) for c, v in sorted(balances.items())]
        if rows:
            await write("INSERT INTO counters (store, name, value) VALUES (?, ?, ?)", rows)
        written += len(rows)
    return written

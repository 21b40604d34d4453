"""The rules of the counter that read master data and the till's own views: what a till
refuses to record though the entry is well formed and its references exist.

* **Inactive records.**  A ``sale`` or ``held_sale`` may not name a product or customer
  whose record says ``active: false`` (a deleted one is not in the document at all:
  ``peer/rules.py`` refuses it as unknown).
* **Credit limits.**  An entry that raises a customer's balance (a sale paid on account)
  may not take it above the customer's ``credit_limit``, judged on the balance this
  till knows: its own entries and every entry it holds from the other tills (LAN, and
  the entries recorded in the same write batch).  A customer without ``credit_limit``
  is not checked; ``0`` allows no credit.  Entries that lower a balance (a customer
  payment, a refund to the account) are never refused for it.
* **Refunds across tills.**  The sale a refund names may be an entry this till holds (its
  own, or one forwarded over the LAN) or one it knows only from the relay's receipt.

The relay applies none of these as a refusal: what a till recorded happened, so it is
accepted there with a warning (``relay/counter_checks.py``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import msgpack

from tillsync.peer.errors import InvalidInput
from tillsync.peer.storage import TillDB
from tillsync.peer.views import Effect, effects

Fields = Callable[[str, str, tuple[str, ...]], Mapping[str, Any] | None]
Balance = Callable[[str], Awaitable[int]]

SOLD_KINDS = ("sale", "held_sale")


def inactive_problem(kind: str, body: Mapping[str, Any], fields: Fields) -> str | None:
    """The first product or customer of a sale (or held sale) that is inactive."""
    if kind not in SOLD_KINDS:
        return None
    named: list[tuple[str, str, str]] = []
    if "customer_id" in body:
        named.append(("body.customer_id", "customers", body["customer_id"]))
    named += [(f"body.lines[{i}].product_id", "products", line["product_id"])
              for i, line in enumerate(body.get("lines", []))]
    for path, collection, record_id in named:
        record = fields(collection, record_id, ("active", "name"))
        if record is not None and record.get("active") is False:
            name = f" ({record['name']})" if record.get("name") else ""
            return (f"{kind}: {path}: {collection[:-1]} {record_id!r}{name} is inactive "
                    f"(active: false) and cannot be in a new {kind}; `tillsync peer put DIR "
                    f"{collection} {record_id} --body '{{\"active\": true}}'` makes it "
                    "active again")
    return None


def balance_changes(kind: str, body: Mapping[str, Any]) -> dict[str, int]:
    """customer id -> what the entry adds to (negative: takes off) what the customer owes,
    by the rule of ``peer.views.effects`` (a sale's own path builds no effect: it is on
    every sale's path, at the till and the relay)."""
    if kind == "sale":
        customer = body.get("customer_id")
        owed = sum(p["amount"] for p in body["payments"] if p["method"] == "account")
        return {customer: owed} if customer is not None and owed else {}
    if kind not in ("refund", "customer_payment"):
        return {}
    out: dict[str, int] = {}
    for effect in effects(kind, "", body):
        if effect.view == "balance":
            out[effect.key] = out.get(effect.key, 0) + int(effect.value)
    return out


def raised_balances(kind: str, body: Mapping[str, Any]) -> dict[str, int]:
    """customer id -> how much the entry adds to what the customer owes (> 0 only)."""
    return {k: v for k, v in balance_changes(kind, body).items() if v > 0}


def credit_message(kind: str, customer_id: str, balance: int, added: int, limit: int,
                   name: str | None = None) -> str:
    who = f"customer {customer_id!r}" + (f" ({name})" if name else "")
    return (f"{kind}: credit limit exceeded: {who} owes {balance} and this {kind} adds "
            f"{added} on account, {balance + added} in all, above the credit limit of "
            f"{limit} (minor units; the balance counts every entry this till holds)")


async def credit_problem(kind: str, body: Mapping[str, Any], fields: Fields,
                         balance: Balance) -> str | None:
    """A customer this entry would take above its credit limit, in words."""
    for customer_id, added in raised_balances(kind, body).items():
        record = fields("customers", customer_id, ("credit_limit", "name"))
        if record is None or "credit_limit" not in record:
            continue
        owed = await balance(customer_id)
        if owed + added > record["credit_limit"]:
            return credit_message(kind, customer_id, owed, added, record["credit_limit"],
                                  record.get("name"))
    return None


async def check(kind: str, body: Mapping[str, Any], fields: Fields, balance: Balance) -> None:
    """Raise ``InvalidInput`` naming the first inactive record or exceeded limit."""
    problem = inactive_problem(kind, body, fields) or \
        await credit_problem(kind, body, fields, balance)
    if problem is not None:
        raise InvalidInput(problem)


async def balance_in(db: TillDB, batch_effects: Sequence[Effect], customer_id: str) -> int:
    """A customer's balance as the till knows it: its views, and what the entries of the
    write batch not committed yet add."""
    return int(await db.view_value("balance", customer_id) or 0) + sum(
        int(e.value) for e in batch_effects if e.view == "balance" and e.key == customer_id)


async def receipt_kind(db: TillDB, client_id: str) -> str | None:
    """The kind of entry a receipt held here answers, unless it was rejected."""
    receipt = await db.receipt(client_id)
    if receipt is None:
        return None
    decoded = msgpack.unpackb(receipt, raw=False)
    if not isinstance(decoded, dict) or decoded.get("status") == "rejected":
        return None
    kind = decoded.get("kind")
    return kind if isinstance(kind, str) else None

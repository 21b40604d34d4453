"""What an entry must refer to before a till records it.

The schema says an entry is well formed; these rules say it makes sense *here*: the
products, customers, cashiers and suppliers it names exist in the master document, the
shift it belongs to is open, the held sale it resumes was held.  They apply to entries
recorded on this till; entries from other devices are accepted on their signature and
chain (their till checked them when they were made).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from peer.errors import InvalidInput, UnknownReference
from peer.totals import figures_problem
from peer.views import quantity

# kind -> (field, collection) pairs naming master-data records.
_RECORD_FIELDS: dict[str, list[tuple[str, str]]] = {
    "sale": [("customer_id", "customers")],
    "held_sale": [("customer_id", "customers")],
    "refund": [("customer_id", "customers")],
    "customer_payment": [("customer_id", "customers")],
    "shift_open": [("cashier_id", "cashiers")],
    "attendance": [("cashier_id", "cashiers")],
    "leave_request": [("cashier_id", "cashiers")],
    "purchase_order": [("supplier_id", "suppliers")],
    "expense": [("supplier_id", "suppliers")],
    "stock_move": [("product_id", "products")],
}
_SHIFT_FIELDS: dict[str, str] = {
    "sale": "shift_client_id",
    "cash_movement": "shift_client_id",
    "held_sale": "shift_client_id",
    "refund": "shift_client_id",
    "customer_payment": "shift_client_id",
    "expense": "shift_client_id",
}


class Lookup:
    """What the rules may ask of the store; the store passes its own methods."""

    def __init__(
        self,
        has_record: Callable[[str, str], bool],
        shift_state: Callable[[str], Awaitable[str | None]],
        entry_kind: Callable[[str], Awaitable[str | None]],
    ) -> None:
        self.has_record = has_record
        self.shift_state = shift_state  # "open", "closed" or None
        self.entry_kind = entry_kind


async def check(kind: str, body: Mapping[str, Any], lookup: Lookup) -> None:
    """Raise ``UnknownReference`` or ``InvalidInput`` naming the first problem."""
    for field, collection in _RECORD_FIELDS.get(kind, []):
        if field in body and not lookup.has_record(collection, body[field]):
            raise UnknownReference(f"{kind}: body.{field}: no {collection} record {body[field]!r}")
    for i, line in enumerate(body.get("lines", [])):
        if "product_id" in line and not lookup.has_record("products", line["product_id"]):
            raise UnknownReference(
                f"{kind}: body.lines[{i}].product_id: unknown product {line['product_id']!r}"
            )
        if "discount" in line and line["discount"] > quantity(line["qty"]) * line["unit_price"]:
            raise InvalidInput(f"{kind}: body.lines[{i}].discount is larger than the line")
    problem = figures_problem(kind, body)
    if problem is not None:
        raise InvalidInput(f"{kind}: {problem}")

    shift_field = _SHIFT_FIELDS.get(kind)
    if shift_field and shift_field in body:
        state = await lookup.shift_state(body[shift_field])
        if state != "open":
            raise UnknownReference(
                f"{kind}: body.{shift_field}: shift {body[shift_field]} is "
                f"{'closed' if state == 'closed' else 'not open on this till (record shift_open)'}"
            )
    if kind == "shift_close":
        state = await lookup.shift_state(body["open_shift_client_id"])
        if state != "open":
            raise UnknownReference(
                f"shift_close: body.open_shift_client_id: shift {body['open_shift_client_id']} "
                f"is {'already closed' if state == 'closed' else 'unknown'}"
            )

    accounts = [p for p in body.get("payments", []) if p["method"] == "account"]
    if (accounts or body.get("method") == "account") and "customer_id" not in body:
        raise InvalidInput(f"{kind}: payment method 'account' needs body.customer_id")

    if kind == "sale" and "held_transaction_client_id" in body:
        held = await lookup.entry_kind(body["held_transaction_client_id"])
        if held != "held_sale":
            raise UnknownReference(
                f"sale: body.held_transaction_client_id: no held_sale "
                f"{body['held_transaction_client_id']}"
            )
    if kind == "refund":
        original = await lookup.entry_kind(body["original_sale_client_id"])
        if original != "sale":
            raise UnknownReference(
                f"refund: body.original_sale_client_id: no sale {body['original_sale_client_id']}"
            )
    if kind == "leave_request" and body["end_date"] < body["start_date"]:
        raise InvalidInput("leave_request: body.end_date is before body.start_date")
    if kind == "journal_entry":
        debit = sum(line["debit"] for line in body["lines"])
        credit = sum(line["credit"] for line in body["lines"])
        if debit != credit:
            raise InvalidInput(f"journal_entry: debits {debit} and credits {credit} differ")

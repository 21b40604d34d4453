"""What an entry must refer to before a till records it.

The schema says an entry is well formed; these rules say it makes sense *here*: the
products, customers, cashiers and suppliers it names exist in the master document, the
shift it belongs to is open and was opened by this till, the held sale it resumes was
held, no line's discount exceeds its amount (the shift and line rules are the relay's
too: ``peer/entry_rules.py``), and the counter's rules (inactive records, credit limits:
``peer/counter_rules.py``).  They apply to entries
recorded on this till; entries from other devices are accepted on their signature and
chain (their till checked them when they were made).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from tillsync.peer import counter_rules
from tillsync.peer.entry_rules import CLOSES_ANY_SHIFT, negative_line, shift_problem
from tillsync.peer.errors import InvalidInput, UnknownReference
from tillsync.peer.log import Entry
from tillsync.peer.totals import figures_problem

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


# Per till (its device id): shift -> the device that opened it, as found in the log.
_OWNERS: dict[str, dict[str, str]] = {}
_OWNERS_KEPT = 10_000


class Lookup:
    """What the rules may ask of the store; the store passes its own methods."""

    def __init__(
        self,
        has_record: Callable[[str, str], bool],
        shift_state: Callable[[str], Awaitable[str | None]],
        entry: Callable[[str], Awaitable[Entry | None]],
        device_id: str,
        *,
        fields: counter_rules.Fields | None = None,
        balance: counter_rules.Balance | None = None,
        receipt_kind: Callable[[str], Awaitable[str | None]] | None = None,
        role: str | None = None,
    ) -> None:
        self.has_record = has_record
        self.shift_state = shift_state  # "open", "closed" or None
        self.entry = entry  # an entry held here, by client_id
        self.device_id = device_id  # this till's
        # For the counter's rules (``peer/counter_rules.py``): scalar fields of a record,
        # a customer's balance as this till knows it, the kind of entry a receipt held
        # here answers.  Left out, those rules are not applied.
        self.fields, self.balance, self.receipt_kind = fields, balance, receipt_kind
        self.role = role  # this till's enrolled role, if known

    async def entry_kind(self, client_id: str) -> str | None:
        entry = await self.entry(client_id)
        return None if entry is None else entry.kind

    async def shift_owner(self, shift_client_id: str) -> str | None:
        """The device that opened a shift, None if no shift_open of it is held here.
        Kept once found (an entry never changes): it is asked for on every sale."""
        known = _OWNERS.setdefault(self.device_id, {})
        owner = known.get(shift_client_id)
        if owner is None:
            entry = await self.entry(shift_client_id)
            if entry is None or entry.kind != "shift_open":
                return None
            if len(known) >= _OWNERS_KEPT:
                known.clear()
            owner = known[shift_client_id] = entry.device_id
        return owner


async def check(kind: str, body: Mapping[str, Any], lookup: Lookup) -> None:
    """Raise ``UnknownReference`` or ``InvalidInput`` naming the first problem."""
    for field, collection in _RECORD_FIELDS.get(kind, []):
        if field in body and not lookup.has_record(collection, body[field]):
            raise UnknownReference(f"{kind}: body.{field}: no {collection} record "
                                   f"{body[field]!r} (deleted, or never created)")
    for i, line in enumerate(body.get("lines", [])):
        if "product_id" in line and not lookup.has_record("products", line["product_id"]):
            raise UnknownReference(
                f"{kind}: body.lines[{i}].product_id: unknown product {line['product_id']!r} "
                "(deleted, or never in the catalogue)"
            )
    problem = figures_problem(kind, body)
    if problem is not None:
        raise InvalidInput(f"{kind}: {problem}")
    if kind in ("sale", "held_sale", "refund") and (line_problem := negative_line(body["lines"])):
        raise InvalidInput(f"{kind}: {line_problem[1]}")

    shift_field = _SHIFT_FIELDS.get(kind)
    if shift_field and shift_field in body:
        await _in_own_open_shift(kind, shift_field, body[shift_field], lookup)
    if kind == "shift_close":
        await _in_own_open_shift(kind, "open_shift_client_id", body["open_shift_client_id"],
                                 lookup)

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
        if original is None and lookup.receipt_kind is not None:
            # A sale of another till, known here from the relay's receipt only.
            original = await lookup.receipt_kind(body["original_sale_client_id"])
        if original != "sale":
            raise UnknownReference(
                f"refund: body.original_sale_client_id: no sale {body['original_sale_client_id']}"
                " held here (neither its entry nor its receipt)"
            )
    if lookup.fields is not None and lookup.balance is not None:
        await counter_rules.check(kind, body, lookup.fields, lookup.balance)
    if kind == "leave_request" and body["end_date"] < body["start_date"]:
        raise InvalidInput("leave_request: body.end_date is before body.start_date")
    if kind == "journal_entry":
        debit = sum(line["debit"] for line in body["lines"])
        credit = sum(line["credit"] for line in body["lines"])
        if debit != credit:
            raise InvalidInput(f"journal_entry: debits {debit} and credits {credit} differ")


async def _in_own_open_shift(kind: str, field: str, shift: str, lookup: Lookup) -> None:
    """The shift an entry names is one this till opened (the relay's ``foreign_shift``)
    and is still open (``shift_closed``; for a ``shift_close``: not closed yet)."""
    state = await lookup.shift_state(shift)
    problem = shift_problem(kind, shift, lookup.device_id, await lookup.shift_owner(shift),
                            closed=state == "closed", role=lookup.role)
    if problem is not None:
        error = InvalidInput if problem[0] == "foreign_shift" else UnknownReference
        raise error(f"{kind}: body.{field}: {problem[1]}")
    if state is None and kind == "shift_close" and lookup.role in CLOSES_ANY_SHIFT \
            and lookup.receipt_kind is not None \
            and await lookup.receipt_kind(shift) == "shift_open":
        return  # another till's shift, known here only from the relay's receipt
    if state != "open":
        what = "unknown" if kind == "shift_close" else "not open on this till (record shift_open)"
        raise UnknownReference(f"{kind}: body.{field}: shift {shift} is {what}")

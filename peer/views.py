"""Views derived from the log, sans I/O: what each entry does to stock, cash and balances.

Derived state is never master data.  Each entry maps to a list of ``Effect`` values; the
storage layer folds them into its ``views`` table in the same transaction that appends
the entry, so the views are always exactly the log's sum and can be rebuilt from it
(``Till.rebuild_views``).  Effects are commutative additions, or a "set" (the suggested
price, a held sale's state, a shift's) that keeps the value of the latest entry by its
place (``order_of``: client time, device, seq), not by arrival, so entries arriving from
other tills in any order fold the same.

Views:

``stock``        product id -> exact quantity on hand (may go negative offline).  Kept for
                 every product; volatile products are filtered out when read.
``last_price``   product id -> last unit price sold: the suggested price of a volatile
                 (weighed, market-priced) product.
``cash``         shift client id -> cash expected in the drawer (opening cash, cash
                 sales, cash in/out, cash refunds, cash payments and expenses).
``balance``      customer id -> what the customer owes (sales on account minus payments
                 and refunds to account).
``shift_opened`` / ``shift_closed``  shift client id -> 1 once seen.
``held``         held-sale client id -> 1 while held, 0 once resumed by a sale.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal


@dataclass(frozen=True)
class Effect:
    view: str
    key: str
    op: Literal["add", "set"]
    value: Decimal
    # For "set": the entry's place in time (``order_of``); the latest set wins, whatever
    # order entries arrive in (a till receives other tills' sales late and out of order).
    at: str = ""


def order_of(client_created_at: str, device_id: str, seq: int) -> str:
    """An entry's place for last-writer-wins views: its time (the till's clock), then
    device and seq to break ties; compared as text."""
    return f"{client_created_at}|{device_id}|{seq:012d}"


def stamped(found: list[Effect], at: str) -> list[Effect]:
    """``found`` with the "set" effects carrying ``at``."""
    # Built directly: dataclasses.replace costs ~3 us an effect, on every sale's path.
    return [Effect(e.view, e.key, e.op, e.value, at) if e.op == "set" else e for e in found]


def quantity(value: object) -> Decimal:
    """An exact quantity from an integer or a decimal string (never a float)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(f"quantity must be an integer or decimal string, not {value!r}")
    return Decimal(value)


MILLIONTHS = 1_000_000  # stored quantities: integers in millionths, exact and summable by SQL


def to_millionths(value: Decimal) -> int:
    scaled = value * MILLIONTHS
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{value} has more than 6 decimal places")
    return int(scaled)


def millionths(value: object) -> int:
    """``to_millionths(quantity(value))``, without a Decimal for a whole quantity."""
    if type(value) is int:
        return value * MILLIONTHS
    return to_millionths(quantity(value))


def from_millionths(value: int) -> Decimal:
    return Decimal(value) / MILLIONTHS


def to_stored(view: str, value: Decimal) -> int:
    """A view's value as the till stores it, an integer: the stock view (quantities) in
    millionths, the others (money, flags) as they are, so the largest amount of money
    (``schemas.limits.INTEGER_MAX``) fits a signed 64-bit integer many times over."""
    if view == "stock":
        return to_millionths(value)
    if value != value.to_integral_value():
        raise ValueError(f"{value} is not a whole number for the {view} view")
    return int(value)


def from_stored(view: str, value: int) -> Decimal:
    """``to_stored`` undone."""
    return from_millionths(value) if view == "stock" else Decimal(value)


def format_quantity(value: Decimal) -> str:
    """'2', '0.75', '-1.5': no exponent, no trailing zeros."""
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "") else text


def _add(view: str, key: str, amount: Decimal | int | str) -> Effect:
    return Effect(view, key, "add", amount if isinstance(amount, Decimal) else quantity(amount))


def effects(kind: str, client_id: str, body: Mapping[str, Any]) -> list[Effect]:
    """What one entry does to the derived views."""
    out: list[Effect] = []
    if kind == "sale":
        for line in body["lines"]:
            out.append(_add("stock", line["product_id"], -quantity(line["qty"])))
            out.append(Effect("last_price", line["product_id"], "set", Decimal(line["unit_price"])))
        for payment in body["payments"]:
            if payment["method"] == "cash":
                out.append(_add("cash", body["shift_client_id"], payment["amount"]))
            elif payment["method"] == "account" and "customer_id" in body:
                out.append(_add("balance", body["customer_id"], payment["amount"]))
        if "held_transaction_client_id" in body:
            out.append(Effect("held", body["held_transaction_client_id"], "set", Decimal(0)))
    elif kind == "held_sale":
        out.append(Effect("held", client_id, "set", Decimal(1)))
    elif kind == "refund":
        if body.get("restock", True):
            for line in body["lines"]:
                out.append(_add("stock", line["product_id"], line["qty"]))
        if body["method"] == "cash" and "shift_client_id" in body:
            out.append(_add("cash", body["shift_client_id"], -body["amount"]))
        elif body["method"] == "account" and "customer_id" in body:
            out.append(_add("balance", body["customer_id"], -body["amount"]))
    elif kind == "stock_move":
        qty = quantity(body["qty"])
        out.append(_add("stock", body["product_id"], -qty if body["direction"] == "out" else qty))
    elif kind == "shift_open":
        out.append(_add("cash", client_id, body["opening_cash"]))
        out.append(Effect("shift_opened", client_id, "set", Decimal(1)))
    elif kind == "shift_close":
        out.append(Effect("shift_closed", body["open_shift_client_id"], "set", Decimal(1)))
    elif kind == "cash_movement":
        sign = 1 if body["direction"] == "in" else -1
        out.append(_add("cash", body["shift_client_id"], sign * body["amount"]))
    elif kind == "customer_payment":
        out.append(_add("balance", body["customer_id"], -body["amount"]))
        if body["method"] == "cash" and "shift_client_id" in body:
            out.append(_add("cash", body["shift_client_id"], body["amount"]))
    elif kind == "expense":
        if body["method"] == "cash" and "shift_client_id" in body:
            out.append(_add("cash", body["shift_client_id"], -body["amount"]))
    return out


def fold(views: dict[tuple[str, str], Decimal], effect: Effect,
         ats: dict[tuple[str, str], str]) -> Decimal:
    """Apply one effect to an in-memory view table (``ats``: the place of each "set"
    value, as ``TillDB.apply_effects`` keeps it); returns the new value."""
    key = (effect.view, effect.key)
    if effect.op == "set":
        if effect.at >= ats.get(key, ""):
            views[key], ats[key] = effect.value, effect.at
        return views[key]
    value = views.get(key, Decimal(0)) + effect.value
    views[key] = value
    return value


def stock_row(product_id: str, product: Mapping[str, Any], qty: Decimal,
              last_price: Decimal | int | None) -> dict[str, Any]:
    """One product's line of a stock report, as till and relay both show it: the level
    and whether it is below its reorder level, or for a volatile product its suggested
    price (the last one sold at, else the list price)."""
    row: dict[str, Any] = {"product_id": product_id, "name": product.get("name"),
                           "sku": product.get("sku"), "volatile": bool(product.get("volatile"))}
    if row["volatile"]:
        row["suggested_price"] = int(last_price if last_price is not None
                                     else product.get("price", 0))
    else:
        row["qty"] = format_quantity(qty)
        if "reorder_level" in product:
            row["reorder_level"] = str(product["reorder_level"])
            row["low"] = qty < quantity(product["reorder_level"])
    return row

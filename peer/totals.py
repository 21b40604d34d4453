"""Sale totals from lines, the one rule both till and relay apply.

A line's amount is ``qty * unit_price`` rounded half up to a whole minor unit (a
weighed 0.75 kg at 4.10/kg is 3.08), less its ``discount``.  The sale total is the sum
of its lines.  The relay recomputes this; a client's ``client_total`` is only compared.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from tillsync.peer.views import millionths, quantity
from tillsync.schemas.limits import INTEGER_MAX, in_range


def line_amount(line: Mapping[str, Any]) -> int:
    qty = line["qty"]
    gross: int
    if type(qty) is int:  # a whole quantity: exact without Decimal (the common case)
        gross = qty * int(line["unit_price"])
    else:
        gross = int((quantity(qty) * line["unit_price"]).quantize(Decimal(1), ROUND_HALF_UP))
    return gross - int(line.get("discount", 0))


def sale_total(lines: Iterable[Mapping[str, Any]]) -> int:
    return sum(line_amount(line) for line in lines)


def line_figures(lines: Iterable[Mapping[str, Any]]) -> list[tuple[int, int]]:
    """Each line's (amount, quantity in millionths): what the relay's decisions and
    running totals take from a sale."""
    return [(line_amount(line), millionths(line["qty"])) for line in lines]


LINE_KINDS = ("sale", "held_sale", "refund")
"""The kinds whose bodies hold sale lines (``common.json#/$defs/line``)."""


def figures_problem(kind: str, body: Mapping[str, Any]) -> str | None:
    """What is out of range (``schemas.limits``) among the figures a schema-valid
    ``body`` implies but no schema can bound: each line's amount and the sum of the
    lines, as one line of text; None if all are in range.  The till refuses such an
    entry, the relay rejects it with code ``out_of_range``."""
    lines = body.get("lines")
    if kind not in LINE_KINDS or not isinstance(lines, list):
        return None
    return amounts_problem(kind, (line_amount(line) for line in lines))


def amounts_problem(kind: str, amounts: Iterable[int]) -> str | None:
    """``figures_problem`` of lines whose amounts are known already."""
    total = 0
    for i, amount in enumerate(amounts):
        if not in_range(amount):
            return (f"body.lines[{i}]: the line amount (qty * unit_price - discount) "
                    f"{amount} is outside -{INTEGER_MAX} .. {INTEGER_MAX}; split the line")
        total += amount
        if not in_range(total):
            return (f"body.lines: the lines' total up to line {i} ({total}) is outside "
                    f"-{INTEGER_MAX} .. {INTEGER_MAX}; split the {kind.replace('_', ' ')}")
    return None

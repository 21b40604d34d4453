"""Sale totals from lines, the one rule both till and relay apply.

A line's amount is ``qty * unit_price`` rounded half up to a whole minor unit (a
weighed 0.75 kg at 4.10/kg is 3.08), less its ``discount``.  The sale total is the sum
of its lines.  The relay recomputes this; a client's ``client_total`` is only compared.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from peer.views import millionths, quantity


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

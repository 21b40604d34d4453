"""Generated sales for the benchmarks: one generator, so both measure the same work."""

from __future__ import annotations

import random
from typing import Any

from peer.totals import sale_total

WEIGHT = "0.75"  # kg of a weighed line


def sale_body(rng: random.Random, catalogue: dict[str, dict[str, Any]], pieces: list[str],
              weighed: list[str], shift: str) -> dict[str, Any]:
    """A valid sale (schemas/entries/sale.json): 1-5 lines, about one in four weighed at a
    market price; paid in cash or by card, with the till's own total."""
    lines: list[dict[str, Any]] = []
    for _ in range(rng.randint(1, 5)):
        if rng.random() < 0.25:
            product = rng.choice(weighed)
            qty: int | str = WEIGHT
            price = catalogue[product]["price"] + rng.randint(-20, 20)  # market price
        else:
            product = rng.choice(pieces)
            qty = rng.randint(1, 3)
            price = catalogue[product]["price"]
        lines.append({"product_id": product, "qty": qty, "unit_price": price})
    amount = sale_total(lines)
    method = "cash" if rng.random() < 0.6 else "card"
    return {"lines": lines, "payments": [{"method": method, "amount": amount}],
            "shift_client_id": shift, "client_total": amount}

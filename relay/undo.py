"""Deciding one entry either takes effect whole or not at all (``relay.decide``).

The checks that can be made before anything changes are (``OutOfRange``); for the rest,
``Undo`` notes the little an entry's decision may change and puts it back, so that an
entry that cannot be decided is rejected alone and the store's state stays exact.  It
copies nothing large: the few counters, lengths of lists, the entry's products.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tillsync.relay.decide import BatchDecisions


class OutOfRange(Exception):
    """Deciding an entry would take a figure out of ``schemas.limits``' range."""


class Undo:
    """What deciding one entry may change of the batch and the store's state, noted
    before: the few counters, the lengths of what the batch gathers, the stock and
    prices of the products the entry moves.  ``restore`` puts it all back."""

    def __init__(self, batch: BatchDecisions, client_id: str,
                 moves: list[tuple[str, int, Mapping[str, Any] | None]]) -> None:
        self.batch, self.client_id, self.counters = batch, client_id, dict(batch.counters)
        self.lengths = (len(batch.receipts), len(batch.waiting), len(batch.invoices),
                        len(batch.alerts))
        products = {m[0] for m in moves}
        self.stock = {p: batch.stock.get(p) for p in products}
        self.changed = products & batch.state.stock_changed
        self.prices = {p: batch.prices.get(p) for p in products}

    def restore(self) -> None:
        batch = self.batch
        batch.counters.update(self.counters)
        receipts, waiting, invoices, alerts = self.lengths
        del batch.receipts[receipts:], batch.invoices[invoices:], batch.alerts[alerts:]
        del batch.waiting[waiting:]
        for product, level in self.stock.items():
            if level is None:
                batch.stock.pop(product, None)
            else:
                batch.stock[product] = level
            if product not in self.changed:
                batch.state.stock_changed.discard(product)
        for product, price in self.prices.items():
            if price is None:
                batch.prices.pop(product, None)
            else:
                batch.prices[product] = price
        for prefix in ("shift", "held"):  # the server id it was given, if any
            batch.maps[prefix].pop(self.client_id, None)
            batch.new_maps[prefix].pop(self.client_id, None)
        batch.maps["shift_device"].pop(self.client_id, None)  # a shift_open's device
        for closed in (batch.maps["shift_closed"], batch.new_maps["shift_closed"]):
            for shift in [s for s, closer in closed.items() if closer == self.client_id]:
                del closed[shift]  # a shift_close's mark (a shift is closed once)

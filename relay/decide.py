"""Deciding entries: the rules the relay applies to each new entry of a batch, in order,
with the store's state in memory (``StoreState``) and the batch's decisions gathered for
one bulk write (``BatchDecisions``).  ``relay/ingest.py`` chains, stores and orders the
entries and calls ``decide_safely`` for each; the rules themselves are listed there.
"""


from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import msgpack

from tillsync.peer.entry_rules import shift_problem
from tillsync.peer.identity import DeviceKey
from tillsync.peer.log import Entry
from tillsync.peer.sync.frames import entry_to_wire
from tillsync.peer.sync.receipts import seal_packed
from tillsync.peer.totals import amounts_problem, line_figures
from tillsync.peer.views import format_quantity, from_millionths, millionths, order_of
from tillsync.relay import counter_checks
from tillsync.relay.prepare import Lines
from tillsync.relay.storage.base import RelayTxn
from tillsync.relay.tallies import Tallies
from tillsync.relay.undo import OutOfRange, Undo
from tillsync.schemas.limits import INTEGER_MAX, OUT_OF_RANGE, in_range

if TYPE_CHECKING:
    from tillsync.relay.ingest import Batch

log = logging.getLogger("tillsync.relay")

UNDECIDABLE = "undecidable"
UNDECIDABLE_MESSAGE = ("the relay could not decide this entry; it is kept in the chain and "
                       "counts for nothing")

SERIES = "INV"
_SERVER_ID_KINDS = {"shift_open": "shift", "held_sale": "held", "purchase_order": "po",
                    "journal_entry": "je"}
_NEEDS_SHIFT = ("sale", "cash_movement", "shift_close")

Catalogue = Callable[[str], Mapping[str, Any] | None]


def about(entry: Entry) -> dict[str, Any]:
    out: dict[str, Any] = {"client_id": entry.client_id, "device_id": entry.device_id,
                           "seq": entry.seq, "kind": entry.kind}
    if entry.ticket is not None:
        out["ticket"] = entry.ticket
    return out


class StoreState:
    """What one transaction knows of a store: read in bulk before any batch is decided,
    then carried in memory from one batch to the next (the transaction holds the store's
    ingest lock throughout, so nobody else changes it), and written back at the end."""

    def __init__(self, txn: RelayTxn, store: str, now: str) -> None:
        self.txn, self.store, self.now = txn, store, now
        self.counters: dict[str, int] = {}
        # Server ids of shifts and held sales; and of shifts, who opened them (from the
        # shift_open entries, not written back) and the shift_close that closed them.
        self.maps: dict[str, dict[str, str]] = {"shift": {}, "held": {}, "shift_device": {},
                                                "shift_closed": {}}
        self.stock: dict[str, int] = {}
        self.stock_changed: set[str] = set()
        self.prices: dict[str, tuple[int, str]] = {}  # product -> (price, sale's place)
        self.levels: dict[str, int] = {}  # reorder levels in millionths, read once
        # Customers' balances (``relay/counter_checks.py``), of those named so far.
        self.balances: dict[str, int] = {}
        self.balances_changed: set[str] = set()
        self.tallies = Tallies()
        self.refused_before: set[tuple[str, str]] = set()
        self.heads: dict[str, tuple[int, bytes]] = {}
        self.known: dict[str, bytes] = {}  # client_id -> hash, of the entries stored
        self.revoked_upto: dict[str, int] = {}
        self.roles: dict[str, str] = {}  # device -> its enrolled role, of those read
        self.stream = (0, bytes(32))  # the receipt stream's (position, head hash)

    async def load(self, batches: Sequence[Batch]) -> None:
        """Everything deciding these batches will read, in one query per kind."""
        txn, store = self.txn, self.store
        devices = {e.device_id for b in batches for e in b.entries}
        client_ids = list(dict.fromkeys(e.client_id for b in batches for e in b.entries))
        self.heads = await txn.heads(store, devices)
        self.known = await txn.known_client_ids(store, client_ids)
        self.refused_before = await txn.rejected(store, client_ids)
        for device in sorted({d for b in batches for d in b.public_keys} & devices):
            row = await txn.device(store, device)
            if row is not None:
                self.roles[device] = row.role
                if row.revoked_upto is not None:
                    self.revoked_upto[device] = row.revoked_upto
        await self.preload([body for b in batches for body, problem, _ in b.checked.values()
                            if problem is None and body is not None])
        self.stream = await txn.stream_head(store)

    async def preload(self, bodies: Iterable[dict[str, Any]]) -> None:
        """Fetch in bulk the shifts, held sales and stock these bodies name, that are not
        known yet (memory may be ahead of the database), and the counters."""
        shifts, held, products = set(), set(), set()
        bodies = list(bodies)
        for body in bodies:
            for key in ("shift_client_id", "open_shift_client_id"):
                if isinstance(body.get(key), str):
                    shifts.add(body[key])
            if isinstance(body.get("held_transaction_client_id"), str):
                held.add(body["held_transaction_client_id"])
            for line in body.get("lines", []) if isinstance(body.get("lines"), list) else []:
                if isinstance(line, dict) and isinstance(line.get("product_id"), str):
                    products.add(line["product_id"])
            if isinstance(body.get("product_id"), str):
                products.add(body["product_id"])
        customers = counter_checks.customers_named(bodies) - self.balances.keys()
        shifts -= self.maps["shift"].keys()
        held -= self.maps["held"].keys()
        products -= self.stock.keys()
        if shifts:
            self.maps["shift"].update(await self.txn.mappings(self.store, "shift", shifts))
            self.maps["shift_closed"].update(
                await self.txn.mappings(self.store, "shift_closed", shifts))
            opened = [s for s in shifts if s in self.maps["shift"]]
            self.maps["shift_device"].update(
                (e.client_id, e.device_id) for e in await self.txn.entries(self.store, opened))
        if held:
            self.maps["held"].update(await self.txn.mappings(self.store, "held", held))
        if products:
            self.stock.update(await self.txn.stock(self.store, products))
        if customers:
            found = await self.txn.counters(
                self.store, [counter_checks.PREFIX + c for c in sorted(customers)])
            self.balances.update((name[len(counter_checks.PREFIX):], value)
                                 for name, value in found.items())
        if not self.counters:
            self.counters.update(await self.txn.counters(
                self.store, [f"invoice:{SERIES}", *sorted(set(_SERVER_ID_KINDS.values()))]))

    async def write(self) -> None:
        """What the batches changed of the store's running state, once for all of them."""
        txn, store = self.txn, self.store
        if self.stock_changed:
            await txn.set_stock(store, {p: self.stock[p] for p in self.stock_changed})
        if self.prices:
            await txn.set_prices(store, self.prices)
        if self.tallies:
            await txn.add_tallies(store, self.tallies.writes(store))
        await txn.set_counters(store, self.counters)
        if self.balances_changed:
            await txn.set_counters(store, {counter_checks.PREFIX + c: self.balances[c]
                                           for c in sorted(self.balances_changed)})
        await txn.set_stream_head(store, *self.stream)


class BatchDecisions:
    """The decisions of one batch, gathered in memory and written in bulk; the store's
    state (counters, stock, mappings, totals) is the transaction's, shared by its batches."""

    def __init__(self, state: StoreState, catalogue: Catalogue, sender: str | None,
                 customers: Catalogue | None = None) -> None:
        self.state, self.txn, self.store = state, state.txn, state.store
        self.sender = sender  # the device whose link carried the batch
        self.catalogue, self.now = catalogue, state.now
        self.customers = customers
        self.counters, self.maps, self.stock = state.counters, state.maps, state.stock
        self.prices, self.tallies = state.prices, state.tallies
        self.refused_before = state.refused_before
        self.receipts: list[dict[str, Any]] = []
        self.packed: list[bytes] = []  # the receipts' msgpack bytes, once sealed
        self.new_maps: dict[str, dict[str, str]] = {"shift": {}, "held": {}, "shift_closed": {}}
        self.waiting: list[tuple[str, str]] = []
        self.invoices: list[tuple[Any, ...]] = []
        self.alerts: list[tuple[Any, ...]] = []
        self.rejected: list[tuple[Any, ...]] = []

    def reject(self, entry: Entry, code: str, message: str, *, keep: bool = True) -> None:
        """A ``rejected`` receipt; ``keep`` also files the entry itself (entries outside
        the stored chain would otherwise be lost).  An entry refused before for the same
        reason (a till re-sends what the relay's heads say it lacks) is not answered
        again: its receipt is already in the stream."""
        if (entry.client_id, code) in self.refused_before:
            return
        self.refused_before.add((entry.client_id, code))
        self.receipts.append({**about(entry), "status": "rejected", "warnings": [],
                              "error": {"code": code, "message": message}})
        wire = msgpack.packb(entry_to_wire(entry), use_bin_type=True)
        self.rejected.append((entry.client_id, entry.device_id, entry.seq, code, message,
                              wire if keep else b"", self.now, self.sender))

    def next(self, counter: str) -> int:
        self.counters[counter] += 1
        return self.counters[counter]

    def stock_moves(self, kind: str, body: dict[str, Any], lines: Lines | None
                    ) -> list[tuple[str, int, Mapping[str, Any] | None]]:
        """(product, delta in millionths, catalogue record) of each stock movement the
        entry makes, volatile products included (``move_stock`` skips them); checked to
        keep every product's stock in range before anything moves (``OutOfRange``)."""
        moves: list[tuple[str, int, Mapping[str, Any] | None]] = []
        if kind == "sale":
            assert lines is not None
            moves = [(line["product_id"], -qty, self.catalogue(line["product_id"]))
                     for line, (_, qty) in zip(body["lines"], lines, strict=True)]
        elif kind == "refund" and body.get("restock", True):
            moves = [(line["product_id"], millionths(line["qty"]),
                      self.catalogue(line["product_id"])) for line in body["lines"]]
        elif kind == "stock_move":
            qty = millionths(body["qty"])
            moves = [(body["product_id"], -qty if body["direction"] == "out" else qty,
                      self.catalogue(body["product_id"]))]
        after: dict[str, int] = {}
        for product_id, delta, product in moves:
            if product is not None and product.get("volatile"):
                continue
            level = after.get(product_id, self.stock.get(product_id) or 0) + delta
            if not in_range(level):
                raise OutOfRange(
                    f"the stock of product {product_id!r} would be {_qty(level)}, outside "
                    f"the range of +-{_qty(INTEGER_MAX)} units; record a stock_move first")
            after[product_id] = level
        return moves

    def move_stock(self, entry: Entry, product_id: str, delta: int,
                   warnings: list[dict[str, Any]], product: Mapping[str, Any] | None,
                   ) -> None:
        """Move a product's stock by ``delta`` millionths of a unit."""
        if product is None:
            warnings.append({"code": "unknown_product", "product_id": product_id})
        elif product.get("volatile"):
            return
        known = self.stock.get(product_id)
        before = known or 0
        after = before + delta
        self.stock[product_id] = after
        self.state.stock_changed.add(product_id)
        if product is not None and "reorder_level" in product:
            level = self.state.levels.get(product_id)
            if level is None:
                level = self.state.levels[product_id] = millionths(product["reorder_level"])
            # Falling below the level warns once; a product's first movement counts as a
            # fall (sold before any delivery was recorded, it is short from the start).
            if after < level and (known is None or level <= before):
                warnings.append({"code": "low_stock", "product_id": product_id,
                                 "qty": _qty(after), "reorder_level": _qty(level)})
                self.alerts.append((entry.client_id, product_id, after, level, self.now))

    def seal(self, key: DeviceKey) -> int:
        """Number, chain and sign this batch's receipts; the stream's position after it."""
        seq, prev = self.state.stream
        if self.receipts:
            head, self.packed = seal_packed(key, self.receipts, seq + 1, prev)
            self.state.stream = (seq + len(self.receipts), head)
        return self.state.stream[0]

    async def write(self) -> None:
        """What this batch adds to the database (the store's running state is written
        once for the transaction, by ``StoreState.write``)."""
        txn, store = self.txn, self.store
        for kind, rows in self.new_maps.items():
            if rows:
                await txn.add_mappings(store, kind, rows)
        if self.waiting:
            await txn.add_waiting(store, self.waiting)
        if self.invoices:
            await txn.add_invoices(store, self.invoices)
        if self.alerts:
            await txn.add_alerts(store, self.alerts)
        if self.rejected:
            await txn.add_rejected(store, self.rejected)
        if self.receipts:
            await txn.insert_receipts(store, self.receipts, self.packed)


def _qty(value: int) -> str:
    return format_quantity(from_millionths(value))


def _decide(batch: BatchDecisions, entry: Entry, body: dict[str, Any],
            lines: Lines | None = None) -> None:
    """Decide one chained entry; appends its receipt (and any it resolves).  ``lines``:
    a sale's (amount, millionths) per line if ``prepare`` found them already."""
    kind = entry.kind
    waits = []
    shift_key = "open_shift_client_id" if kind == "shift_close" else "shift_client_id"
    if kind in _NEEDS_SHIFT and body[shift_key] not in batch.maps["shift"]:
        waits.append(body[shift_key])
    held = body.get("held_transaction_client_id") if kind == "sale" else None
    if held is not None and held not in batch.maps["held"]:
        waits.append(held)
    if waits:
        batch.waiting.extend((entry.client_id, w) for w in waits)
        batch.receipts.append({**about(entry), "status": "waiting", "warnings": [],
                               "waiting_for": waits})
        return

    if kind in _NEEDS_SHIFT:
        shift = body[shift_key]
        problem = shift_problem(kind, shift, entry.device_id,
                                batch.maps["shift_device"].get(shift),
                                shift in batch.maps["shift_closed"],
                                batch.state.roles.get(entry.device_id))
        if problem is not None:
            batch.reject(entry, *problem, keep=False)  # in the chain already
            return
    receipt: dict[str, Any] = {**about(entry), "status": "accepted", "warnings": []}
    total = 0
    if kind == "sale" and lines is None:  # a waiting sale decided now: not prepared
        lines = line_figures(body["lines"])
        out_of_range = amounts_problem(kind, (amount for amount, _ in lines))
        if out_of_range is not None:
            raise OutOfRange(out_of_range)
    if lines is not None:
        total = sum(amount for amount, _ in lines)
    # Checked before anything changes; from here on the entry's effects are applied.
    moves = batch.stock_moves(kind, body, lines)
    undo = Undo(batch, entry.client_id, moves)
    try:
        _apply(batch, entry, body, lines, receipt, total, moves, held)
    except BaseException:
        undo.restore()
        raise


def _apply(batch: BatchDecisions, entry: Entry, body: dict[str, Any], lines: Lines | None,
           receipt: dict[str, Any], total: int,
           moves: list[tuple[str, int, Mapping[str, Any] | None]], held: str | None) -> None:
    """The effects of an entry ``_decide`` accepts, and its receipt."""
    kind, warnings = entry.kind, receipt["warnings"]
    shift_key = "open_shift_client_id" if kind == "shift_close" else "shift_client_id"
    if kind in _NEEDS_SHIFT:
        receipt["shift_server_id"] = batch.maps["shift"][body[shift_key]]
    if kind == "shift_close":
        shift = body[shift_key]
        batch.maps["shift_closed"][shift] = batch.new_maps["shift_closed"][shift] = \
            entry.client_id
    if kind == "sale":
        assert lines is not None
        number = batch.next(f"invoice:{SERIES}")
        receipt.update(series=SERIES, invoice_no=number, total=total)
        if held is not None:
            receipt["held_server_id"] = batch.maps["held"][held]
        if "client_total" in body and body["client_total"] != total:
            warnings.append({"code": "total_mismatch", "client_total": body["client_total"],
                             "total": total})
        batch.invoices.append((SERIES, number, entry.client_id, entry.device_id, entry.ticket,
                               total, entry.client_created_at, batch.now, entry.seq))
        at = ""
        for line, (product_id, delta, product) in zip(body["lines"], moves, strict=True):
            if product is not None and product.get("volatile"):
                # The latest sale by its time sets the price, as on every till.
                at = at or order_of(entry.client_created_at, entry.device_id, entry.seq)
                if at >= batch.prices.get(product_id, (0, ""))[1]:
                    batch.prices[product_id] = (line["unit_price"], at)
            else:
                batch.move_stock(entry, product_id, delta, warnings, product)
    else:
        for product_id, delta, product in moves:
            batch.move_stock(entry, product_id, delta, warnings, product)
    if kind in _SERVER_ID_KINDS:
        prefix = _SERVER_ID_KINDS[kind]
        receipt["server_id"] = f"{prefix}-{batch.next(prefix)}"
        if kind in ("purchase_order", "journal_entry"):
            receipt["draft"] = True
        if prefix in batch.maps:
            batch.maps[prefix][entry.client_id] = receipt["server_id"]
            batch.new_maps[prefix][entry.client_id] = receipt["server_id"]
        if kind == "shift_open":
            batch.maps["shift_device"][entry.client_id] = entry.device_id
    # The counter's rules, noted but never refused (``relay/counter_checks.py``).
    balances = counter_checks.new_balances(kind, body, batch.state.balances)
    warnings += counter_checks.record_warnings(kind, body, moves, batch.customers)
    warnings += counter_checks.credit_warnings(batch.state.balances, balances, batch.customers)
    # Last: the running totals take the entry whole or not at all (``Tallies.add``).
    if kind == "sale":
        batch.tallies.add(kind, entry.client_id, entry.device_id, entry.client_created_at,
                          body, total, SERIES, lines, ticket=entry.ticket, receipt=receipt)
    else:
        batch.tallies.add(kind, entry.client_id, entry.device_id, entry.client_created_at, body,
                          receipt=receipt)
    batch.state.balances.update(balances)
    batch.state.balances_changed.update(balances)
    batch.receipts.append(receipt)


def decide_safely(batch: BatchDecisions, entry: Entry, body: dict[str, Any],
                   lines: Lines | None = None) -> None:
    """``_decide``, but an entry that cannot be decided (a figure out of range, any
    unexpected error) gets a ``rejected`` receipt of its own, with nothing of its effects
    kept; it never fails the batch."""
    try:
        _decide(batch, entry, body, lines)
    except OutOfRange as exc:
        batch.reject(entry, OUT_OF_RANGE, f"{entry.kind}: {exc}", keep=False)
    except Exception:
        log.exception("entry %s (seq %d of device %s) could not be decided", entry.client_id,
                      entry.seq, entry.device_id)
        batch.reject(entry, UNDECIDABLE, UNDECIDABLE_MESSAGE, keep=False)

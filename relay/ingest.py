"""Ingest: what the relay decides for a batch of entries, in one transaction.

For each device in the batch the relay continues that device's chain from the head it
holds: entries it already has are skipped (idempotency by position and ``client_id``),
the new ones must follow on (contiguous ``seq``, ``prev`` = hash before) and the
signature of the last one must verify; a valid signature over the head vouches for the
whole run, so a batch costs one Ed25519 verification per device, not one per entry.

Then, in ingestion order, each new entry is decided:

* schema re-checked (a bad body is stored, since it is part of the signed chain, and
  answered with a ``rejected`` receipt: nothing is ever dropped), and the other rules of
  an entry on its own (``peer/entry_rules.py``: client_id, canonical body, no negative
  sale line);
* ``sale``, ``cash_movement``, ``shift_close``: the shift rules (``foreign_shift``,
  ``shift_closed``; a ``backoffice`` or ``admin`` device may close another's shift),
  also for entries that waited for their shift;
* ``sale``: totals recomputed from the lines (a different ``client_total`` is a warning),
  next gapless invoice number of the store's series, stock moved (volatile products
  instead update their suggested price), low-stock warning when stock falls below the
  reorder level;
* ``shift_open`` / ``held_sale``: a server id; entries waiting for them are resolved now;
* ``shift_close``, ``cash_movement``, ``sale``: they need their shift (and a resumed held
  sale) to be known; if it has not arrived yet the receipt says ``waiting``, and an
  ``accepted`` receipt follows when it does;
* ``purchase_order`` / ``journal_entry``: stored as drafts with a server id;
* every accepted entry: the counter's rules, as warnings (``relay/counter_checks.py``: a
  sale of an inactive or deleted record, a customer's balance above its credit limit).

Every decision becomes a receipt, numbered in the store's stream and chained; the last
one of the batch is signed.  Counters (invoice numbers, server ids, stream position)
are read and written inside the transaction, never kept in memory beyond it.

A group commit (``ingest_all``) decides several batches in one transaction: each store's
state is read once for all of them (one query per kind), carried in memory from batch to
batch, and its counters, stock and running totals written once at the end.  The work that
needs no database (hashes, bodies, schema checks, line amounts) is ``prepare``, done
before the transaction, in a worker process for large batches.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from tillsync.peer.entry_rules import entry_problem, negative_line, shift_problem
from tillsync.peer.identity import DeviceKey
from tillsync.peer.log import Entry, verify_chain
from tillsync.peer.sync.frames import entry_to_wire
from tillsync.peer.sync.receipts import seal_packed
from tillsync.peer.totals import LINE_KINDS, amounts_problem, figures_problem, line_figures
from tillsync.peer.views import format_quantity, from_millionths, millionths, order_of
from tillsync.relay import counter_checks
from tillsync.relay.storage.base import RelayTxn
from tillsync.relay.tallies import Tallies
from tillsync.relay.undo import OutOfRange, Undo
from tillsync.schemas.limits import INTEGER_MAX, OUT_OF_RANGE, in_range

log = logging.getLogger("tillsync.relay")

UNDECIDABLE = "undecidable"
UNDECIDABLE_MESSAGE = ("the relay could not decide this entry; it is kept in the chain and "
                       "counts for nothing")

SERIES = "INV"
_SERVER_ID_KINDS = {"shift_open": "shift", "held_sale": "held", "purchase_order": "po",
                    "journal_entry": "je"}
_NEEDS_SHIFT = ("sale", "cash_movement", "shift_close")

Catalogue = Callable[[str], Mapping[str, Any] | None]


@dataclass
class IngestResult:
    receipts: list[dict[str, Any]] = field(default_factory=list)
    packed: list[bytes] = field(default_factory=list)  # each receipt's msgpack bytes
    heads: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    gaps: dict[str, int] = field(default_factory=dict)  # device -> seq the relay wants next
    position: int = 0  # the receipt stream's position after this batch
    # For the relay's metrics: entries new to the chains, invoice numbers given, and
    # rejected receipts by code.
    stored: int = 0
    invoices: int = 0
    rejected: dict[str, int] = field(default_factory=dict)


def _about(entry: Entry) -> dict[str, Any]:
    out: dict[str, Any] = {"client_id": entry.client_id, "device_id": entry.device_id,
                           "seq": entry.seq, "kind": entry.kind}
    if entry.ticket is not None:
        out["ticket"] = entry.ticket
    return out


class _Store:
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


class _Batch:
    """The decisions of one batch, gathered in memory and written in bulk; the store's
    state (counters, stock, mappings, totals) is the transaction's, shared by its batches."""

    def __init__(self, state: _Store, catalogue: Catalogue, sender: str | None,
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
        self.receipts.append({**_about(entry), "status": "rejected", "warnings": [],
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
        once for the transaction, by ``_Store.write``)."""
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


def _decode_body(entry: Entry) -> dict[str, Any] | None:
    try:
        body = msgpack.unpackb(entry.body_bytes, raw=False)
    except Exception:  # any malformed body is answered with a rejection, never raised
        return None
    return body if isinstance(body, dict) else None


def _decide(batch: _Batch, entry: Entry, body: dict[str, Any],
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
        batch.receipts.append({**_about(entry), "status": "waiting", "warnings": [],
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
    receipt: dict[str, Any] = {**_about(entry), "status": "accepted", "warnings": []}
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


def _apply(batch: _Batch, entry: Entry, body: dict[str, Any], lines: Lines | None,
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


def _decide_safely(batch: _Batch, entry: Entry, body: dict[str, Any],
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


# A valid sale's lines as (amount in minor units, quantity in millionths): what deciding
# it and counting it need, computed with the schema check, off the write lock.
Lines = Sequence[tuple[int, int]]
Prepared = tuple[dict[str, Any] | None, tuple[str, str] | None, Lines | None]
Checked = dict[int, Prepared]


def _prepared(entry: Entry) -> Prepared:
    body = _decode_body(entry)
    problem = entry_problem(entry.client_id, entry.kind, entry.body_bytes, body,
                            check_lines=False)
    lines = None
    if problem is None and entry.kind in LINE_KINDS:
        assert body is not None
        if entry.kind == "sale":
            lines = line_figures(body["lines"])
            found = amounts_problem(entry.kind, (amount for amount, _ in lines))
        else:
            found = figures_problem(entry.kind, body)
        if found is not None:
            problem, lines = (OUT_OF_RANGE, f"{entry.kind}: {found}"), None
        elif lines is not None:
            problem = negative_line(body["lines"], [amount for amount, _ in lines])
            lines = None if problem is not None else lines
    return body, problem, lines


def prepare(entries: Sequence[Entry]) -> Checked:
    """The work that needs no database: hashes, body decoding, schema checks, the
    amounts of a sale's lines.

    Run it before taking the write lock, so it overlaps another batch's transaction;
    returns id(entry) -> (body, problem, lines): keyed by the object, since a hostile
    batch may repeat a client_id or a position with other content."""
    checked: Checked = {}
    for entry in entries:
        _ = entry.hash  # computed once here, cached on the entry
        checked[id(entry)] = _prepared(entry)
    return checked


def prepare_packed(wire: bytes) -> bytes:
    """``prepare`` in a worker process, across a cheap boundary both ways: in, the
    entries as msgpack wire arrays; out, msgpack of (hash, problem, lines) per entry, in
    order.  Bodies do not come back: the caller decodes them again (``adopt``), about
    what unpickling them cost it, and the worker's share halves (24 -> 12 us an entry,
    GC off) with nothing pickled either way."""
    out = []
    for item in msgpack.unpackb(wire, raw=False, use_list=False):
        entry = Entry(*item)
        _body, problem, lines = _prepared(entry)
        out.append((entry.hash, problem, lines))
    packed: bytes = msgpack.packb(out, use_bin_type=True)
    return packed


def pack_for_worker(entries: Sequence[Entry]) -> bytes:
    """What ``prepare_packed`` takes: the entries as the wire's arrays."""
    packed: bytes = msgpack.packb([entry_to_wire(e) for e in entries], use_bin_type=True)
    return packed


def adopt(entries: Sequence[Entry], packed: bytes) -> Checked:
    """Turn a worker's ``prepare_packed`` answer into ``Checked`` for these entries."""
    checked: Checked = {}
    found = msgpack.unpackb(packed, raw=False, use_list=False)
    for entry, (digest, problem, lines) in zip(entries, found, strict=True):
        entry.__dict__["hash"] = digest  # the cached_property's slot
        body = _decode_body(entry) if problem is None else None
        checked[id(entry)] = (body, problem, lines)
    return checked


@dataclass
class Batch:
    """One frame of entries to decide, and what deciding it needs.  ``public_keys`` holds
    the registered keys of the store's devices (revoked ones too); entries of other
    devices are rejected and kept.  ``checked`` is ``prepare(entries)`` if the caller ran
    it already; ``key`` is the store's signing key (it signs the receipts).  ``sender``
    is the authenticated device whose link carried the batch: each rejection records it
    beside the entry's own ``device_id`` (they differ for entries a till forwards)."""

    store: str
    entries: Sequence[Entry]
    public_keys: Mapping[str, bytes]
    catalogue: Catalogue
    key: DeviceKey
    checked: Checked = field(default_factory=dict)
    sender: str | None = None
    customers: Catalogue | None = None  # what the counter's checks read of a customer

    def __post_init__(self) -> None:
        if not self.checked:
            self.checked = prepare(self.entries)


async def ingest(
    txn: RelayTxn,
    store: str,
    entries: Sequence[Entry],
    *,
    public_keys: Mapping[str, bytes],
    catalogue: Catalogue,
    key: DeviceKey,
    now: str,
    checked: Checked | None = None,
) -> IngestResult:
    """Decide one batch inside ``txn`` (``ingest_all`` of that one batch)."""
    batch = Batch(store, entries, public_keys, catalogue, key, checked or {})
    return (await ingest_all(txn, [batch], now))[0]


async def ingest_all(txn: RelayTxn, batches: Sequence[Batch], now: str, *,
                     decide: bool = True) -> list[IngestResult]:
    """Decide batches, of any stores, in order inside ``txn`` (a group commit).

    A revoked device's entries beyond the seq it was revoked at are rejected (read inside
    the transaction, so a revocation and a batch of the device cannot interleave).  The
    stores' state is read in bulk first, one query per kind for all the batches; then
    each batch is decided with it in memory and its rows written; the stores' counters,
    stock and totals are written once at the end.

    ``decide=False`` is the last resort for a batch whose transaction failed even alone:
    its entries are chained and stored as usual, and each new one is rejected with code
    ``undecidable`` instead of being decided, so the device's log can go on."""
    await txn.lock({b.store for b in batches})
    states: dict[str, _Store] = {}
    for store in sorted({b.store for b in batches}):
        states[store] = _Store(txn, store, now)
        await states[store].load([b for b in batches if b.store == store])
    results = [await _ingest_one(states[batch.store], batch, decide) for batch in batches]
    for state in states.values():
        await state.write()
    return results


async def _ingest_one(state: _Store, source: Batch, decide: bool = True) -> IngestResult:
    txn, store, checked = state.txn, state.store, source.checked
    result = IngestResult()
    batch = _Batch(state, source.catalogue, source.sender, source.customers)
    by_device: dict[str, list[Entry]] = defaultdict(list)
    for entry in source.entries:
        by_device[entry.device_id].append(entry)
    known, revoked_upto = state.known, state.revoked_upto
    seen: set[str] = set()

    chained: list[Entry] = []
    for device, group in by_device.items():
        seq, prev = state.heads.get(device, (0, bytes(32)))
        public_key = source.public_keys.get(device)
        run: list[Entry] = []
        for entry in sorted(group, key=lambda e: e.seq):
            if public_key is None:
                batch.reject(entry, "unknown_device", "no enrolled device of this store has "
                                                      "this id")
                continue
            if entry.seq <= seq:
                if known.get(entry.client_id) == entry.hash:
                    result.duplicates += 1  # already ingested: its receipt is in the stream
                else:
                    batch.reject(entry, "conflicting_entry", f"seq {entry.seq} is already "
                                 "held with other content (a forked or replayed chain)")
                continue
            if entry.seq > revoked_upto.get(device, entry.seq):
                batch.reject(entry, "revoked", f"device {device} was revoked after its entry "
                             f"{revoked_upto[device]}: later entries are refused")
                continue
            if entry.seq != seq + len(run) + 1:
                result.gaps[device] = seq + len(run) + 1  # the device should resend from here
                break
            if entry.prev != (run[-1].hash if run else prev):
                # The right position but not the chain the relay holds: a forked or
                # altered log. Refused and kept; the chain cannot go on past it.
                batch.reject(entry, "broken_chain", f"prev of seq {entry.seq} is not the hash "
                             "of the entry before it held by the relay")
                break
            if entry.client_id in known or entry.client_id in seen:
                # An idempotency key reused by a different entry: the chain stops here
                # until someone looks at this device.
                batch.reject(entry, "duplicate_client_id", "this client_id is already used "
                             "by another entry of this store")
                break
            seen.add(entry.client_id)
            run.append(entry)
        if run:
            run = _verified_prefix(run, public_key or b"", seq, prev, batch)
        if run:
            state.heads[device] = (run[-1].seq, run[-1].hash)
            known.update((e.client_id, e.hash) for e in run)
        chained.extend(run)
        if public_key is not None:
            result.heads[device] = state.heads.get(device, (0, b""))[0]

    # Stored first, so entries that wait on others of this batch can be read back.
    if chained:
        await txn.insert_entries(store, chained, state.now)
    bodies: list[tuple[Entry, dict[str, Any]]] = []
    lines: dict[str, Lines] = {}
    for entry in chained:
        body, problem, sale_lines = checked[id(entry)]
        if problem is None and not decide:
            problem = UNDECIDABLE, UNDECIDABLE_MESSAGE
        if problem is not None:
            batch.reject(entry, *problem, keep=False)  # stored in the chain already
            continue
        assert body is not None
        bodies.append((entry, body))
        if sale_lines is not None:
            lines[entry.client_id] = sale_lines
    for entry, body in bodies:
        _decide_safely(batch, entry, body, lines.get(entry.client_id))
        if entry.kind in ("shift_open", "held_sale"):
            await _resolve_waiting(batch, entry.client_id)
    result.position = batch.seal(source.key)
    result.receipts, result.packed = batch.receipts, batch.packed
    result.stored, result.invoices = len(chained), len(batch.invoices)
    for row in batch.rejected:  # rare: not one per entry
        result.rejected[row[3]] = result.rejected.get(row[3], 0) + 1
    await batch.write()
    return result


def _verified_prefix(run: list[Entry], public_key: bytes, seq: int, prev: bytes,
                     batch: _Batch) -> list[Entry]:
    """The run if its head signature holds; else the part before the first bad entry,
    with the rest rejected and kept."""
    if verify_chain(run, public_key, after_seq=seq, after_hash=prev,
                    every_signature=False) is None:
        return run
    broken = verify_chain(run, public_key, after_seq=seq, after_hash=prev)
    assert broken is not None
    good = [e for e in run if e.seq < broken.seq]
    for entry in run[len(good):]:
        if entry.seq == broken.seq:
            batch.reject(entry, "bad_signature", "the device's signature does not verify")
        else:
            batch.reject(entry, "broken_chain",
                         f"follows entry {broken.seq}, whose signature does not verify")
    return good


async def _resolve_waiting(batch: _Batch, dependency: str) -> None:
    """Decide again the entries that were waiting for ``dependency``, now it is known."""
    # Entries of this very batch that wait on it are still in memory.
    local = [c for c, w in batch.waiting if w == dependency]
    batch.waiting = [(c, w) for c, w in batch.waiting if w != dependency]
    stored = await batch.txn.waiting_for(batch.store, [dependency])
    ids = list(dict.fromkeys([*local, *stored]))
    if not ids:
        return
    found = {e.client_id: e for e in await batch.txn.entries(batch.store, ids)}
    resolved = [(found[c], body) for c in ids if c in found
                for body in [_decode_body(found[c])] if body is not None]
    await batch.state.preload(body for _entry, body in resolved)
    for device in sorted({e.device_id for e, _ in resolved} - batch.state.roles.keys()):
        row = await batch.txn.device(batch.store, device)  # a close of an earlier batch
        if row is not None:
            batch.state.roles[device] = row.role
    for entry, body in resolved:
        # Still waiting on something else? _decide records that again.
        batch.waiting = [(c, w) for c, w in batch.waiting if c != entry.client_id]
        _decide_safely(batch, entry, body)

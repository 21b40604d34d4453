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

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tillsync.peer.identity import DeviceKey
from tillsync.peer.log import Entry, verify_chain
from tillsync.relay.decide import (
    UNDECIDABLE,
    UNDECIDABLE_MESSAGE,
    BatchDecisions,
    Catalogue,
    StoreState,
    decide_safely,
)
from tillsync.relay.prepare import Checked, Lines, decode_body, prepare
from tillsync.relay.storage.base import RelayTxn


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
    states: dict[str, StoreState] = {}
    for store in sorted({b.store for b in batches}):
        states[store] = StoreState(txn, store, now)
        await states[store].load([b for b in batches if b.store == store])
    results = [await _ingest_one(states[batch.store], batch, decide) for batch in batches]
    for state in states.values():
        await state.write()
    return results


async def _ingest_one(state: StoreState, source: Batch, decide: bool = True) -> IngestResult:
    txn, store, checked = state.txn, state.store, source.checked
    result = IngestResult()
    batch = BatchDecisions(state, source.catalogue, source.sender, source.customers)
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
        decide_safely(batch, entry, body, lines.get(entry.client_id))
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
                     batch: BatchDecisions) -> list[Entry]:
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


async def _resolve_waiting(batch: BatchDecisions, dependency: str) -> None:
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
                for body in [decode_body(found[c])] if body is not None]
    await batch.state.preload(body for _entry, body in resolved)
    for device in sorted({e.device_id for e, _ in resolved} - batch.state.roles.keys()):
        row = await batch.txn.device(batch.store, device)  # a close of an earlier batch
        if row is not None:
            batch.state.roles[device] = row.role
    for entry, body in resolved:
        # Still waiting on something else? _decide records that again.
        batch.waiting = [(c, w) for c, w in batch.waiting if c != entry.client_id]
        decide_safely(batch, entry, body)


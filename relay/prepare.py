"""Preparing a batch of entries: the work that needs no database (each entry's hash, its
body decoded, the schema and the other rules of an entry on its own, the amounts of a
sale's lines), done before the write lock is taken, so it overlaps another batch's
transaction (``relay/ingest.py``), or in a worker process (``prepare_packed``).
"""


from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgpack

from tillsync.peer.entry_rules import entry_problem, negative_line
from tillsync.peer.log import Entry
from tillsync.peer.sync.frames import entry_to_wire
from tillsync.peer.totals import LINE_KINDS, amounts_problem, figures_problem, line_figures
from tillsync.schemas.limits import OUT_OF_RANGE

# A valid sale's lines as (amount in minor units, quantity in millionths): what deciding
# it and counting it need, computed with the schema check, off the write lock.
Lines = Sequence[tuple[int, int]]
Prepared = tuple[dict[str, Any] | None, tuple[str, str] | None, Lines | None]
Checked = dict[int, Prepared]


def decode_body(entry: Entry) -> dict[str, Any] | None:
    try:
        body = msgpack.unpackb(entry.body_bytes, raw=False)
    except Exception:  # any malformed body is answered with a rejection, never raised
        return None
    return body if isinstance(body, dict) else None



def _prepared(entry: Entry) -> Prepared:
    body = decode_body(entry)
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
        body = decode_body(entry) if problem is None else None
        checked[id(entry)] = (body, problem, lines)
    return checked


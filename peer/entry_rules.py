"""The rules every end applies to an entry alike: the till before recording it, a LAN
peer before giving a forwarded entry any effect, the relay before deciding it.

Two families, each with a stable code (the relay's ``rejected`` receipt; the till's
error message says the same thing in words):

* the entry on its own (``entry_problem``): ``malformed_body``, ``unknown_kind``,
  ``bad_client_id`` (not a lowercase UUID v4), ``schema``, ``not_canonical`` (body bytes
  other than the canonical msgpack of the body: keys sorted at every level, shortest
  encodings), ``negative_line`` (a sale line whose discount exceeds its amount);
* the entry against its shift (``shift_problem``): ``foreign_shift`` (a ``sale``,
  ``cash_movement`` or ``shift_close`` naming another device's shift) and
  ``shift_closed`` (naming a shift that is closed already, a second close included).
  One exception: a device enrolled as ``backoffice`` or ``admin`` may record the
  ``shift_close`` of another device's shift (a dead or replaced till's open shift), once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import msgpack

from tillsync.peer.totals import line_amount
from tillsync.schemas import ENTRY_KINDS, SchemaViolation, validate_entry

CLIENT_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
"""An entry's ``client_id``: a UUID v4 written lowercase, 8-4-4-4-12."""

Problem = tuple[str, str]  # (code, message)


def client_id_problem(client_id: str) -> Problem | None:
    if CLIENT_ID.fullmatch(client_id):
        return None
    return "bad_client_id", (f"client_id {client_id[:40]!r} is not a UUID v4 written "
                             "lowercase 8-4-4-4-12 (such as "
                             "'0b7e7f52-1f7a-4c3e-9d55-3c0f4a1e9b21')")


def _ordered(value: dict[Any, Any] | list[Any]) -> bool:
    """Every map in ``value`` has its keys in sorted order."""
    if type(value) is dict:
        keys = [*value]
        if keys != sorted(keys):
            return False
        items: Any = value.values()
    else:
        items = value
    for item in items:
        kind = type(item)
        if (kind is dict or kind is list) and not _ordered(item):
            return False
    return True


def is_canonical(body_bytes: bytes, body: dict[str, Any]) -> bool:
    """``body_bytes`` are exactly the canonical msgpack of ``body``, their decoding.

    Encoding the decoded body again gives the same bytes only if every value had its
    shortest form and no key was repeated (a decoded map keeps the order its keys came
    in); then the keys must be in sorted order at every level.  About 4 µs for a sale
    (``tools/bench_entry_rules.py``), where sorting a copy of the body first would take
    about 5."""
    try:
        return bool(msgpack.packb(body, use_bin_type=True) == body_bytes) and _ordered(body)
    except (TypeError, ValueError):  # keys that do not sort, a type msgpack cannot write
        return False


def negative_line(lines: Sequence[Mapping[str, Any]],
                  amounts: Sequence[int] | None = None) -> Problem | None:
    """A sale line whose discount makes its amount negative (``amounts``: the lines'
    amounts if the caller computed them already)."""
    for i, line in enumerate(lines):
        amount = amounts[i] if amounts is not None else line_amount(line)
        if amount < 0:
            return "negative_line", (f"body.lines[{i}].discount {line.get('discount')} is "
                                     f"larger than the line's amount {amount + line['discount']}"
                                     "; a discount may at most zero a line")
    return None


def entry_problem(client_id: str, kind: str, body_bytes: bytes, body: object, *,
                  check_lines: bool = True) -> Problem | None:
    """What is wrong with an entry on its own, or None.  ``body``: ``body_bytes``
    decoded (None if they are not a msgpack map).  ``check_lines=False`` leaves a sale's
    ``negative_line`` to the caller, who computes the lines' amounts anyway."""
    if not isinstance(body, dict):
        return "malformed_body", "the body is not a msgpack map"
    if kind not in ENTRY_KINDS:
        return "unknown_kind", f"unknown entry kind {kind[:40]!r}"
    problem = client_id_problem(client_id)
    if problem is not None:
        return problem
    try:
        validate_entry(kind, body)
    except SchemaViolation as exc:
        return "schema", str(exc)
    if not is_canonical(body_bytes, body):
        return "not_canonical", ("the body bytes are not the canonical msgpack of the body "
                                 "(keys sorted at every level, shortest encodings)")
    if kind == "sale" and check_lines:
        return negative_line(body["lines"])
    return None


# The roles whose devices may close another device's shift.
CLOSES_ANY_SHIFT = frozenset({"backoffice", "admin"})


def shift_problem(kind: str, shift: str, device_id: str, owner: str | None,
                  closed: bool, role: str | None = None) -> Problem | None:
    """A ``sale``, ``cash_movement`` or ``shift_close`` of ``device_id`` (enrolled with
    ``role``, if known) naming ``shift``, opened by ``owner`` (None: not known here) and
    maybe ``closed`` already."""
    if owner is not None and owner != device_id and not (
            kind == "shift_close" and role in CLOSES_ANY_SHIFT):
        return "foreign_shift", (f"shift {shift} was opened by device {owner}; a device "
                                 "records only in a shift it opened itself (a backoffice "
                                 "or admin device may close it)")
    if closed and kind == "shift_close":
        return "shift_closed", f"shift {shift} is closed already; a shift is closed once"
    if closed:
        return "shift_closed", (f"shift {shift} is closed; a {kind} belongs in an open shift "
                                "(record shift_open)")
    return None

"""What the parts of ``Till`` share: the rows of one group commit (``_Batch``), an
entry's effects on the views, and ``TillBase``, the state every part reads.

``Till`` (``peer/store.py``) is put together from three parts, each a module:

- ``peer/store.py``: opening and closing a store, the writer task and its group commit,
  master-data edits and ``record``, the till's own log;
- ``peer/store_inbound.py``: what other devices and the relay bring: certificates,
  revocations, forwarded entries, receipts, document changes;
- ``peer/store_reads.py``: derived views (stock, cash, balances, held sales), status
  and verification.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from tillsync.peer.entry_rules import CLOSES_ANY_SHIFT, entry_problem, shift_problem
from tillsync.peer.log import Entry
from tillsync.peer.master import MasterData
from tillsync.peer.storage import TillDB
from tillsync.peer.views import Effect, effects, order_of, stamped

T = TypeVar("T")


@dataclass(frozen=True)
class Committed:
    """Where the store stood after its last commit (``Till.committed``).

    Memory runs ahead of the disk while a batch is in flight: its ops move the device
    heads and the master document before its transaction commits, and the writer's own
    connection reads the rows it has written.  A reader that must not show a write before
    it is durable (the live events) reads only up to this."""

    heads: Mapping[str, int]  # device id -> highest seq committed; never changed
    master: tuple[bytes, ...]  # the master document's heads
    receipts: int  # position in the relay's receipt stream


@dataclass
class _Batch:
    """Rows of one group commit, gathered before the single transaction that writes them."""

    entries: list[Entry] = field(default_factory=list)
    effects: list[Effect] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)
    snapshot: bytes | None = None  # the whole document now, stored as its snapshot
    by_client_id: dict[str, Entry] = field(default_factory=dict)
    receipts: list[tuple[str, int, str, bytes]] = field(default_factory=list)
    stream: list[tuple[int, bytes]] = field(default_factory=list)
    certs: list[tuple[str, bytes, str, bytes]] = field(default_factory=list)
    revocations: list[tuple[str, int, bytes]] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)
    uncounted: list[tuple[str, str]] = field(default_factory=list)  # (client_id, code)


def _effects_of(entry: Entry) -> list[Effect]:
    """What an entry does to the views.  An entry another till forwarded may be one the
    relay will reject (unknown kind, a body that is not a valid map): it is kept as
    signed, with no effect, here and when the views are rebuilt alike."""
    try:
        body = entry.body
    except Exception:  # a body that is not msgpack
        return []
    if entry_problem(entry.client_id, entry.kind, entry.body_bytes, body) is not None:
        return []  # what the relay rejects on its own (entry_rules): no effect anywhere
    return _stamped_effects(entry, body)


# The kinds the relay puts to the shift rules, and the field naming their shift.
SHIFT_FIELD = {"sale": "shift_client_id", "cash_movement": "shift_client_id",
               "shift_close": "open_shift_client_id"}


def shift_refused(entry: Entry, owner: str | None, closed: bool, role: str | None
                  ) -> str | None:
    """The code the relay will reject a forwarded entry with of a ``SHIFT_FIELD`` kind by the
    shift rules (``peer/entry_rules.py``), judged on what this till holds: its shift's
    ``owner`` (None: no ``shift_open`` of it held), whether it is ``closed`` already, and
    the role of the entry's device.  A device's own ``shift_open`` comes before its
    entries in its chain, which a till holds in order: a shift not held here is not the
    device's own (the relay keeps such an entry waiting, or rejects it), except for the
    close a back-office device records of another till's shift."""
    shift = entry.body[SHIFT_FIELD[entry.kind]]
    if owner is None:
        privileged = entry.kind == "shift_close" and role in CLOSES_ANY_SHIFT
        return None if privileged else "foreign_shift"
    problem = shift_problem(entry.kind, shift, entry.device_id, owner, closed, role)
    return None if problem is None else problem[0]


def _stamped_effects(entry: Entry, body: Mapping[str, Any]) -> list[Effect]:
    """An entry's effects, its "set" ones carrying its place (``order_of``)."""
    return stamped(effects(entry.kind, entry.client_id, body),
                   order_of(entry.client_created_at, entry.device_id, entry.seq))


class TillBase:
    """The state of one open store that every part of ``Till`` reads (set in
    ``Till.__init__``), and the methods one part calls in another."""

    path: Path
    device_id: str
    name: str
    series: str
    store_id: str
    meta: dict[str, str]
    master: MasterData
    _db: TillDB
    _head: tuple[int, bytes]  # this device's last (seq, hash)
    _tickets: int
    _others: dict[str, tuple[int, bytes]]  # other devices' heads held here
    _keys: dict[str, bytes]  # device id -> public key, of devices known here
    _certs: dict[str, bytes]  # device id -> certificate, where known
    _roles: dict[str, tuple[bytes, str]]  # device id -> (certificate, role)
    _revoked: dict[str, tuple[int, bytes]]  # device id -> (upto, record)

    if TYPE_CHECKING:
        @property
        def relay_key(self) -> bytes | None: ...

        async def _submit(self, op: Callable[[_Batch], Awaitable[T]]) -> T: ...

        async def _shift_state(self, shift_client_id: str) -> str | None: ...

        def heads(self) -> dict[str, int]: ...

        def receipts_position(self) -> tuple[int, bytes]: ...

        def device_name(self, device_id: str) -> str | None: ...

        def role_of(self, device_id: str) -> str | None: ...

        def revoked_upto(self, device_id: str) -> int | None: ...

        async def receipts(self, status: str | None = None) -> list[dict[str, Any]]: ...

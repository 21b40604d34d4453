"""The part of ``Till`` that reads: derived views (stock, expected cash, balances,
held sales), the status a till shows, and verification of the whole store."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import msgpack

from tillsync.peer.errors import InvalidInput
from tillsync.peer.files import RECORD_FIELDS, FileRef
from tillsync.peer.log import GENESIS_PREV, ChainBreak, Entry
from tillsync.peer.store_base import TillBase, _effects_of
from tillsync.peer.views import fold, stock_row


@dataclass
class VerifyReport:
    """What ``Till.verify`` found.  ``ok`` is False if anything at all is wrong."""

    entries: int = 0
    devices: int = 0
    first_break: ChainBreak | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.first_break is None and not self.problems

    def to_json(self) -> dict[str, Any]:
        brk = self.first_break
        return {
            "ok": self.ok,
            "entries_checked": self.entries,
            "devices": self.devices,
            "first_break": None if brk is None else {
                "device_id": brk.device_id, "seq": brk.seq,
                "client_id": brk.client_id, "reason": brk.reason,
            },
            "problems": self.problems,
        }


class Reads(TillBase):
    """Derived views, status and verification."""

    async def receipts(self, status: str | None = None) -> list[dict[str, Any]]:
        """The latest receipt of every entry the relay has answered (any device)."""
        return [msgpack.unpackb(b, raw=False) for b in await self._db.receipts(status)]

    async def tickets(self, start: str | None = None, end: str | None = None, limit: int = 1,
                      ticket: str | None = None) -> list[tuple[Entry, dict[str, Any] | None]]:
        """Ticketed sales, newest first, with their receipts (``TillDB.tickets``)."""
        return [(e, None if r is None else msgpack.unpackb(r, raw=False))
                for e, r in await self._db.tickets(start, end, limit, ticket)]

    # -- derived views -----------------------------------------------------------------

    async def stock(self) -> list[dict[str, Any]]:
        """Stock of every tracked product; suggested price of every volatile one."""
        levels = await self._db.view("stock")
        last_price = await self._db.view("last_price")
        return [stock_row(product_id, product, levels.get(product_id, Decimal(0)),
                          last_price.get(product_id))
                for product_id, product in sorted(self.master.all("products").items())]

    async def expected_cash(self, shift_client_id: str) -> int:
        """Cash that should be in the drawer of a shift, in minor units."""
        if await self._shift_state(shift_client_id) is None:
            raise InvalidInput(f"no shift {shift_client_id} on this till")
        return int(await self._db.view_value("cash", shift_client_id) or 0)

    async def shifts(self) -> list[dict[str, Any]]:
        opened = await self._db.view("shift_opened")
        closed = await self._db.view("shift_closed")
        cash = await self._db.view("cash")
        return [
            {"shift_client_id": s, "open": s not in closed, "expected_cash": int(cash.get(s, 0))}
            for s in sorted(opened)
        ]

    async def balances(self) -> dict[str, int]:
        """What each customer owes (sales on account minus payments), minor units."""
        return {k: int(v) for k, v in sorted((await self._db.view("balance")).items())}

    async def balance(self, customer_id: str) -> int:
        if not self.master.has("customers", customer_id):
            raise InvalidInput(f"no customers record {customer_id!r}")
        return int(await self._db.view_value("balance", customer_id) or 0)

    async def held_sales(self) -> list[str]:
        """Held sales not yet resumed."""
        return sorted(k for k, v in (await self._db.view("held")).items() if v)

    async def pending(self, limit: int = 100) -> tuple[int, list[Entry]]:
        """Entries the relay has not acknowledged yet: the count and the oldest few."""
        return await self._db.pending(limit)

    async def status(self) -> dict[str, Any]:
        pending, _ = await self.pending(limit=0)
        counts = await self._db.count_entries()
        return {
            "path": str(self.path),
            "device_id": self.device_id,
            "name": self.name,
            "series": self.series,
            "store_id": self.store_id,
            "store_key": self.meta.get("relay_key") or None,  # pinned on enrollment
            "last_seq": self._head[0],
            "last_ticket": f"{self.series}-{self._tickets:06d}" if self._tickets else None,
            "entries": counts,
            "devices": {d: {"name": self.device_name(d), "last_seq": seq}
                        for d, seq in sorted(self.heads().items())},
            "pending": pending,
            "relay": self.meta.get("relay_url") or None,
            "last_contact": self.meta.get("last_contact") or None,
            "last_error": self.meta.get("last_error") or None,
            "receipts_position": self.receipts_position()[0],
            "revoked": {d: upto for d, (upto, _) in sorted(self._revoked.items())},
            "rejected": [{"client_id": r["client_id"], "kind": r.get("kind"),
                          "seq": r.get("seq"), "device_id": r.get("device_id"),
                          **r.get("error", {})}
                         for r in await self.receipts("rejected")],
            "waiting": await self._db.count_receipts("waiting"),
            "open_shifts": [s for s in await self.shifts() if s["open"]],
            "held_sales": await self.held_sales(),
            "master": {c: len(self.master.ids(c)) for c in ("products", "customers",
                                                            "suppliers", "cashiers")},
        }

    async def rebuild_views(self) -> dict[tuple[str, str], Decimal]:
        """The views folded afresh from the whole log (for checks and repair)."""
        views: dict[tuple[str, str], Decimal] = {}
        ats: dict[tuple[str, str], str] = {}
        # Forwarded entries judged on arrival to break a shift rule (``receive_entries``):
        # the verdict depends on what was held then, so it is kept, not judged again.
        uncounted = await self._db.uncounted()
        async for entry, _ in self._db.entries():
            if entry.client_id in uncounted:
                continue
            for effect in _effects_of(entry):
                fold(views, effect, ats)
        return views

    # -- verification ------------------------------------------------------------------

    async def verify(self, progress: Callable[[int], None] | None = None) -> VerifyReport:
        """Re-check the database pages, every chain link and every signature."""
        report = VerifyReport()
        report.problems.extend(f"sqlite: {p}" for p in await self._db.integrity_check())
        devices = await self._db.devices()
        report.devices = len(devices)
        expected: dict[str, tuple[int, bytes]] = {}
        async for entry, stored_hash in self._db.entries():
            report.entries += 1
            if progress is not None and report.entries % 10_000 == 0:
                progress(report.entries)
            if report.first_break is not None:
                continue
            seq, prev = expected.get(entry.device_id, (0, GENESIS_PREV))
            known = devices.get(entry.device_id)
            reason = None
            if known is None:
                reason = "entry of a device this store does not know"
            elif entry.seq != seq + 1:
                reason = f"expected seq {seq + 1}: the log has a gap"
            elif entry.prev != prev:
                reason = "prev does not match the hash of the entry before it"
            elif entry.hash != stored_hash:
                reason = "content does not match its stored hash (the entry was altered)"
            elif not entry.signature_valid(known[0]):
                reason = "signature does not match the entry's content"
            if reason is not None:
                report.first_break = ChainBreak(entry.device_id, entry.seq, entry.client_id,
                                                reason)
            expected[entry.device_id] = (entry.seq, entry.hash)
        stored_views = {(v, k): x for v in ("stock", "cash", "balance", "last_price",
                                               "shift_opened", "shift_closed", "held")
                        for k, x in (await self._db.view(v)).items()}
        if report.first_break is None and stored_views != await self.rebuild_views():
            report.problems.append("derived views differ from the log (run a rebuild)")
        return report

    async def file_names(self) -> set[str]:
        """The files this till's entries (any device's) and master records name; only
        those go to the relay and the LAN peers (``peer.files``, "Uploads no entry
        names")."""
        names = await self._db.file_names()
        for collection, field_name in RECORD_FIELDS.items():
            for record in self.master.all(collection).values():
                ref = FileRef.from_json(record.get(field_name))
                if ref is not None:
                    names.add(ref.sha256)
        return names

"""Reports that list things by name: sales whose total the till got wrong, held sales,
drafts (purchase orders, journal entries), and entries waiting at the relay.

The first three read ``report_items``, one row per such entry written by ingest in the
transaction that accepts it (``relay.tallies``), indexed by store, kind and time; the
waiting entries are the relay's ``waiting`` table itself (an entry leaves it when what
it waited for arrives).  So a list costs what it lists, not the store's history.
"""

from __future__ import annotations

from typing import Any

from tillsync.peer.errors import InvalidInput
from tillsync.relay import reports
from tillsync.relay.reports import Range
from tillsync.relay.storage import RelayStorage

EVERY_DAY = Range()  # no bound either side
LISTS = ("mismatches", "held", "drafts", "waiting")


async def _items(storage: RelayStorage, store: str, kinds: tuple[str, ...], within: Range
                 ) -> list[tuple[Any, ...]]:
    cond, args = within.where("at")
    marks = ", ".join("?" * len(kinds))
    return await storage.read(
        "SELECT kind, client_id, device_id, at, ref, amount, other, note, closed_by FROM "
        f"report_items WHERE store = ? AND kind IN ({marks}) AND at IS NOT NULL{cond} "
        "ORDER BY at, client_id", (store, *kinds, *args))


async def mismatches(storage: RelayStorage, store: str, within: Range = EVERY_DAY
                     ) -> list[dict[str, Any]]:
    """Numbered sales whose ``client_total`` differed from the total the relay computed
    (the invoice carries the relay's): ticket, invoice, both totals, the difference."""
    await reports.check_store(storage, store)
    names = {d.device_id: d.name for d in await storage.devices(store)}
    return [{"at": at, "client_id": client_id, "device_id": device,
             "till": names.get(device), "ticket": ticket, "invoice": invoice,
             "total": int(total), "client_total": int(claimed),
             "difference": int(claimed) - int(total)}
            for _, client_id, device, at, ticket, total, claimed, invoice, _ in
            await _items(storage, store, ("total_mismatch",), within)]


async def held(storage: RelayStorage, store: str, within: Range = EVERY_DAY
               ) -> list[dict[str, Any]]:
    """Held sales (parked baskets): server id, till, time, amount of their lines,
    customer or note, and the sale that resumed it (None while it is still held)."""
    await reports.check_store(storage, store)
    names = {d.device_id: d.name for d in await storage.devices(store)}
    return [{"at": at, "client_id": client_id, "server_id": ref, "device_id": device,
             "till": names.get(device), "amount": None if amount is None else int(amount),
             "note": note, "resumed_by": closed_by, "state": "resumed" if closed_by else "held"}
            for _, client_id, device, at, ref, amount, _, note, closed_by in
            await _items(storage, store, ("held_sale",), within)]


async def drafts(storage: RelayStorage, store: str, within: Range = EVERY_DAY
                 ) -> list[dict[str, Any]]:
    """Purchase orders and journal entries: the relay keeps them as drafts with a server
    id (``po-3``, ``je-1``).  Amount: an order's expected cost, an entry's debits."""
    await reports.check_store(storage, store)
    names = {d.device_id: d.name for d in await storage.devices(store)}
    return [{"at": at, "kind": kind, "client_id": client_id, "server_id": ref,
             "device_id": device, "till": names.get(device),
             "amount": None if amount is None else int(amount), "note": note}
            for kind, client_id, device, at, ref, amount, _, note, _ in
            await _items(storage, store, ("purchase_order", "journal_entry"), within)]


async def waiting(storage: RelayStorage, store: str) -> list[dict[str, Any]]:
    """Entries the relay holds but has not decided: each waits for a shift's opening or a
    held sale it names that has not arrived yet (what, and since when it was made)."""
    await reports.check_store(storage, store)
    names = {d.device_id: d.name for d in await storage.devices(store)}
    rows = await storage.read(
        "SELECT e.client_created_at, e.kind, w.client_id, e.device_id, e.seq, e.ticket, "
        "w.waiting_for, e.received_at FROM waiting w JOIN entries e ON e.store = w.store "
        "AND e.client_id = w.client_id WHERE w.store = ? ORDER BY e.client_created_at, "
        "w.client_id", (store,))
    return [{"at": at, "kind": kind, "client_id": client_id, "device_id": device,
             "till": names.get(device), "seq": int(seq), "ticket": ticket,
             "waiting_for": waiting_for, "received_at": received}
            for at, kind, client_id, device, seq, ticket, waiting_for, received in rows]


async def listing(storage: RelayStorage, store: str, name: str, within: Range = EVERY_DAY
                  ) -> list[dict[str, Any]]:
    """One of ``LISTS`` by name (the CLI's and the API's entry point)."""
    if name == "mismatches":
        return await mismatches(storage, store, within)
    if name == "held":
        return await held(storage, store, within)
    if name == "drafts":
        return await drafts(storage, store, within)
    if name == "waiting":
        return await waiting(storage, store)
    raise InvalidInput(f"no list {name!r}: one of {', '.join(LISTS)}")

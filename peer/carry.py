"""A till enrolled again as a new device, carrying what its old identity cannot.

When the relay will never number a device's later entries (its chain is stopped by a
refused entry, ``peer.chainstop``: a bit flipped on the till's disk, or the device was
revoked by mistake), ``peer enroll DIR --relay URL --code CODE --new-device`` gives the
till a new device id, key and ticket series, enrolled with a fresh one-time code, in the
same store directory, and records again, as entries of the new device, every entry of
the old one the relay has not numbered and never will.

Why this way and not by lifting a revocation: a revocation is final everywhere (every
till keeps it, and the relay refuses the device's later entries whoever forwards them),
so it cannot be undone without giving a thief's key its power back; and a corrupted
entry cannot be signed again into the old chain without rewriting it.  Here nothing
already signed changes: the old entries stay in the log and at the relay (in its
rejected entries) exactly as they were, and each carried entry is a new, signed entry
of a device an operator has just enrolled on purpose.  Its body is the old one's (the
references to other carried entries, such as a sale's shift, pointing at their new
copies, and a shift of the old device's that the relay holds replaced by a shift the
new device opens, since a device records only in its own shifts); its client_id is
derived from the old one's (``carried_id``), so carrying again never records anything
twice.  A carried sale gets a ticket of the new series: the
old ticket printed for the customer stays in the old entry, which the receipts list.
An entry whose body is damaged (the flipped bit) cannot be carried; it is named.
"""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tillsync.peer.chainstop import STOPPING
from tillsync.peer.client import SyncError, enroll_checked, sync_once
from tillsync.peer.errors import InvalidInput, TillsyncError
from tillsync.peer.identity import KEY_FILE, DeviceKey
from tillsync.peer.log import Entry
from tillsync.peer.store import Till
from tillsync.peer.tls import normalise_pin
from tillsync.schemas import SchemaViolation

CARRY_NAMESPACE = uuid.UUID("5d1c0c6e-3f0a-4a57-9a55-7a2b1e0c7c11")


def carried_id(old_client_id: str) -> str:
    """The client_id of an entry carried from ``old_client_id``: the same every time,
    and shaped as the UUID v4 every client_id must be (a name-based hash, with the
    version bits of v4)."""
    digest = uuid.uuid5(CARRY_NAMESPACE, old_client_id).bytes
    return str(uuid.UUID(bytes=digest, version=4))


@dataclass
class Carried:
    old_device: str
    new_device: str
    series: str
    carried: list[dict[str, Any]] = field(default_factory=list)  # old and new ids, ticket
    not_carried: list[dict[str, Any]] = field(default_factory=list)  # with the reason


def _next_series(old: str, used: set[str]) -> str:
    base = re.sub(r"[^A-Z0-9]", "", old)[:10] or "T"
    n = 1
    while f"{base}R{n}" in used:
        n += 1
    return f"{base}R{n}"


async def _rotate(till: Till, *, url: str, code: str, name: str, series: str | None,
                  tls_pin: str | None, tls_ca: str | None) -> tuple[str, str]:
    """Enroll a new device for the store and make it this store's own; returns (new
    device id, series).  The old key is kept beside the new one, renamed."""
    used = {str(e.ticket).rsplit("-", 1)[0] for e in await till.entries() if e.ticket}
    series = series or _next_series(till.series, used | {till.series})
    if series in used or series == till.series:
        raise InvalidInput(f"ticket series {series!r} is used in this store already: pick "
                           "another --series, so that no provisional ticket repeats")
    if not re.fullmatch(r"[A-Z0-9]{1,12}", series):
        raise InvalidInput(f"ticket series {series!r}: use 1-12 capital letters or digits")
    key, device_id = DeviceKey.generate(), str(uuid.uuid4())
    enrolled = await enroll_checked(url, code, name, key, device_id, tls_pin=tls_pin,
                                    tls_ca=tls_ca)
    if enrolled.store != till.store_id:
        raise InvalidInput(f"the code enrolls a device of store {enrolled.store}, but this "
                           f"till belongs to store {till.store_id}: make a code for "
                           f"{till.store_id} (the device enrolled with this one does "
                           "nothing; revoke it)")
    root = till.path
    pending_key = key.write(root, f"{KEY_FILE}.{device_id}.new")
    meta = {"device_id": device_id, "name": name, "series": series,
            "public_key": key.public_bytes.hex(), "relay_url": url,
            "previous_device": till.device_id, "previous_public_key": till.public_key.hex(),
            "relay_key": enrolled.relay_key.hex()}
    meta.update({k: v for k, v in (("relay_tls_pin", tls_pin), ("relay_tls_ca", tls_ca)) if v})
    cert = (device_id, key.public_bytes, name, enrolled.cert)

    async def op(batch: Any) -> None:
        batch.meta.update(meta)
        batch.certs.append(cert)

    await till._submit(op)  # the store's own writer: one transaction
    # The database names the new device now; its key takes the usual name, the old key
    # stays beside it (the old entries are checked with the public key the store holds).
    os.replace(root / KEY_FILE, root / f"{KEY_FILE}.{till.device_id}.old")
    os.replace(pending_key, root / KEY_FILE)
    return device_id, series


async def _unnumbered(till: Till, device_id: str) -> list[Entry]:
    """The old device's entries the relay has not numbered and never will, as far as
    this till knows after a sync: those after its revocation (``upto``), and those
    from the first one refused in a way that stops its chain.  Nothing else: an entry
    the relay may still number (or has, and the receipt is not here yet) is never
    carried, so no sale is numbered twice."""
    stops = [int(r.get("seq") or 0) for r in await till.receipts("rejected")
             if r.get("device_id") == device_id
             and r.get("error", {}).get("code") in STOPPING]
    limits = [*stops, *((upto + 1,) if (upto := till.revoked_upto(device_id)) is not None
                         else ())]
    if not limits:
        return []
    first = min(limits)
    numbered = {r["client_id"] for r in await till.receipts("accepted")}
    return sorted((e for e in await till.entries() if e.device_id == device_id
                   and e.seq >= first and e.client_id not in numbered),
                  key=lambda e: e.seq)


_SHIFT_FIELDS = ("shift_client_id", "open_shift_client_id")


async def _own_shift(till: Till, shift_id: str, renamed: dict[str, str]) -> None:
    """A carried entry names a shift the old device opened and did not need carrying
    (the relay holds it): a device records only in shifts it opened itself
    (``peer.entry_rules``), so the new device opens one of its own in its place, once
    (same cashier; opening cash 0, as the old shift keeps what it opened with), and the
    carried entries name that one."""
    if shift_id in renamed:
        return
    opened = await till.entry(shift_id)
    if opened is None or opened.kind != "shift_open" or opened.device_id == till.device_id:
        return
    replacement = await till.record(
        "shift_open", {"cashier_id": opened.body["cashier_id"], "opening_cash": 0},
        client_id=carried_id(shift_id))
    renamed[shift_id] = replacement.client_id


async def carry(till: Till, old_device: str, old_key: bytes
                ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Record again, as this till's (new) device, the old device's unnumbered entries
    whose signature (by ``old_key``) still holds; returns what was carried and what
    could not be."""
    entries = await _unnumbered(till, old_device)
    renamed = {e.client_id: carried_id(e.client_id) for e in entries}
    carried, not_carried = [], []
    for entry in entries:
        about = {"seq": entry.seq, "kind": entry.kind, "client_id": entry.client_id,
                 "ticket": entry.ticket}
        if not entry.signature_valid(old_key):
            not_carried.append({**about, "reason": "damaged on this till's disk: its "
                                "signature does not verify, so what it says cannot be "
                                "trusted (the relay keeps it among its rejected entries)"})
            continue
        try:
            for name in _SHIFT_FIELDS:
                if isinstance(entry.body.get(name), str):
                    await _own_shift(till, entry.body[name], renamed)
            body = {k: renamed.get(v, v) if isinstance(v, str) else v
                    for k, v in entry.body.items()}
            new = await till.record(entry.kind, body, client_id=renamed[entry.client_id])
        except (TillsyncError, SchemaViolation, ValueError, TypeError) as exc:
            not_carried.append({**about, "reason": str(exc)})
            continue
        carried.append({**about, "new_client_id": new.client_id, "new_seq": new.seq,
                        "new_ticket": new.ticket})
    return carried, not_carried


async def enroll_new_device(path: Path, *, url: str, code: str, name: str | None = None,
                            series: str | None = None, tls_pin: str | None = None,
                            tls_ca: str | None = None) -> Carried:
    """``peer enroll DIR --new-device``: enroll, make the new device this store's own,
    then carry the old device's unnumbered entries over."""
    if tls_pin:
        tls_pin = normalise_pin(tls_pin)
    till = await Till.open(path, wait=10.0)
    try:
        if till.relay_key is None:
            raise InvalidInput(f"{path} is not enrolled at a relay: enroll it as it is, "
                               "without --new-device")
        old, old_key = till.device_id, till.public_key
        new, series = await _rotate(till, url=url, code=code, name=name or till.name,
                                    series=series, tls_pin=tls_pin, tls_ca=tls_ca)
    finally:
        await till.close()
    result = Carried(old, new, series)
    async with await Till.open(path, wait=10.0) as till:
        # What the relay refused and the revocations: known only after a round.
        try:
            await sync_once(till)
        except SyncError as exc:
            raise SyncError(f"{path} is enrolled as the new device {new}, but the relay "
                            f"could not be reached to say what it refused ({exc}); nothing "
                            f"was carried yet: run `tillsync peer enroll {path} --carry` "
                            "once it can be") from None
        result.carried, result.not_carried = await carry(till, old, old_key)
    return result


async def carry_again(path: Path) -> Carried:
    """``peer enroll DIR --carry``: carry after a ``--new-device`` whose round with the
    relay failed (or again: nothing is recorded twice)."""
    async with await Till.open(path, wait=10.0) as till:
        old = await till._db.meta("previous_device")
        if not old:
            raise InvalidInput(f"{path} has not been enrolled as a new device: nothing to "
                               "carry (see `peer enroll --new-device`)")
        old_key = bytes.fromhex(await till._db.meta("previous_public_key") or "")
        await sync_once(till)
        result = Carried(old, till.device_id, till.series)
        result.carried, result.not_carried = await carry(till, old, old_key)
    return result

"""The part of ``Till`` that takes in what other devices and the relay bring:
certificates and revocations the relay signed, entries other tills forwarded (chain and
signatures checked), the relay's receipts, and document changes."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import msgpack

from tillsync.peer.cert import Certificate, CertificateError, Revocation
from tillsync.peer.errors import EntryRefused, Forbidden
from tillsync.peer.log import GENESIS_PREV, Entry, verify_chain
from tillsync.peer.master import MasterData
from tillsync.peer.master.roles import MANAGING_ROLES, guarded_edit
from tillsync.peer.store_base import SHIFT_FIELD, TillBase, _Batch, _effects_of, shift_refused

log = logging.getLogger("peer.store")


class Inbound(TillBase):
    """Certificates, revocations, forwarded entries, receipts and document changes."""

    @property
    def cert(self) -> bytes | None:
        """This device's certificate from the relay, once it has one."""
        return self._certs.get(self.device_id)

    def certs(self) -> dict[str, bytes]:
        return dict(self._certs)

    def _may_edit(self, collection: str, record_id: str,
                  body: Mapping[str, object] | None) -> None:
        role = self.role_of(self.device_id)
        if role is None or role in MANAGING_ROLES:  # a store of its own has no roles
            return
        # The price alone, read in microseconds (``get`` copies the whole record).
        what = guarded_edit(collection, record_id,
                            self.master.fields(collection, record_id, ("price",)), body)
        if what is not None:
            raise Forbidden(f"{what} may be changed only from a back-office or admin "
                            f"device; this device is enrolled as {role!r} (keep the "
                            "catalogue on a device enrolled with `tillsync relay enroll "
                            "--role backoffice`)")

    def role_of(self, device_id: str) -> str | None:
        """The role in a device's certificate (None if this till holds none for it)."""
        cert = self._certs.get(device_id)
        if cert is None or self.relay_key is None:
            return None
        cached = self._roles.get(device_id)
        if cached is None or cached[0] != cert:
            cached = self._roles[device_id] = (
                cert, Certificate.load(cert, self.relay_key).role)
        return cached[1]

    def device_name(self, device_id: str) -> str | None:
        cert = self._certs.get(device_id)
        if cert is None or self.relay_key is None:
            return None
        return Certificate.load(cert, self.relay_key).name

    async def add_certs(self, raws: list[bytes]) -> list[str]:
        """Keep certificates the relay issued (checked against its key and this store);
        returns the problems of those refused.  A certificate never replaces the key of a
        device already known, nor a certificate that runs out later (a peer may forward
        an older one; the relay issues a fresh one on every sync)."""
        if self.relay_key is None:
            return ["this store is not enrolled at a relay: it cannot check certificates"]
        problems: list[str] = []
        fresh: dict[str, Certificate] = {}
        for raw in raws:
            try:
                cert = Certificate.load(raw, self.relay_key, store=self.store_id)
            except CertificateError as exc:
                problems.append(str(exc))
                continue
            known = self._keys.get(cert.device)
            if known is not None and known != cert.public_key:
                problems.append(f"certificate of {cert.device} names another key than the "
                                "one this store knows")
            elif self._certs.get(cert.device) != raw and _later(cert, self._certs.get(
                    cert.device), self.relay_key):
                fresh[cert.device] = cert
        if fresh:
            async def op(batch: _Batch) -> None:
                for c in fresh.values():
                    batch.certs.append((c.device, c.public_key, c.name, c.raw))
                    self._keys.setdefault(c.device, c.public_key)
                    self._certs[c.device] = c.raw

            await self._submit(op)
        return problems

    def revoked_upto(self, device_id: str) -> int | None:
        """The seq after which ``device_id``'s entries are refused, if it is revoked."""
        known = self._revoked.get(device_id)
        return None if known is None else known[0]

    def revocations(self) -> list[bytes]:
        """The relay's signed revocations this till holds, to forward on the LAN."""
        return [record for _, record in sorted(self._revoked.values())]

    async def add_revocations(self, raws: list[bytes]) -> list[str]:
        """Keep revocations the relay signed for this store; returns the problems of
        those refused.  From now on the revoked devices cannot link with this till and
        their entries after ``upto`` are neither taken nor passed on."""
        if self.relay_key is None:
            return ["this store is not enrolled at a relay: it cannot check revocations"]
        problems: list[str] = []
        fresh: dict[str, Revocation] = {}
        for raw in raws:
            try:
                revocation = Revocation.load(raw, self.relay_key, store=self.store_id)
            except CertificateError as exc:
                problems.append(str(exc))
                continue
            if revocation.device not in self._revoked:
                fresh[revocation.device] = revocation
        if fresh:
            async def op(batch: _Batch) -> None:
                for r in fresh.values():
                    batch.revocations.append((r.device, r.upto, r.raw))
                    self._revoked.setdefault(r.device, (r.upto, r.raw))
                    log.warning("device %s is revoked: its entries after seq %d are refused",
                                r.device, r.upto)

            await self._submit(op)
        return problems

    async def receive_entries(self, entries: list[Entry]) -> int:
        """Store other devices' entries forwarded by a peer, after checking them: each
        device's run must continue the chain held here, and every entry's signature must
        verify with the device's certified key.  Entries already held are skipped; a run
        that starts beyond the head held here is left for later.  Returns how many were
        stored.

        Raises ``EntryRefused`` (nothing stored) if any run is broken or forged, or an
        entry reuses the client_id of another."""
        by_device: dict[str, list[Entry]] = {}
        for entry in entries:
            by_device.setdefault(entry.device_id, []).append(entry)

        async def op(batch: _Batch) -> int:
            stored: list[Entry] = []
            heads: dict[str, tuple[int, bytes]] = {}
            for device, run in by_device.items():
                if device == self.device_id:
                    continue  # this till is the authority on its own log
                key = self._keys.get(device)
                if key is None or device not in self._certs:
                    raise EntryRefused(f"entries of device {device}, whose certificate "
                                       "this store has not been given")
                seq, prev = self._others.get(device, (0, GENESIS_PREV))
                upto = self.revoked_upto(device)
                run = sorted((e for e in run if e.seq > seq), key=lambda e: e.seq)
                if upto is not None and run and run[-1].seq > upto:
                    log.warning("entries of revoked device %s after seq %d refused", device,
                                upto)
                    run = [e for e in run if e.seq <= upto]
                if not run or run[0].seq != seq + 1:
                    continue  # nothing new, or a gap: the peer resends from our head
                # Every signature, not just the head's: the head vouches for the content
                # of the run, but not for the signature bytes of the entries before it,
                # and this till keeps and forwards them as they came.
                brk = verify_chain(run, key, after_seq=seq, after_hash=prev)
                if brk is not None:
                    raise EntryRefused(f"forwarded entries do not verify: {brk}")
                stored += run
                heads[device] = (run[-1].seq, run[-1].hash)
            held = await self._db.holders([e.client_id for e in stored])
            for entry in stored:
                taken = batch.by_client_id.get(entry.client_id)
                holder = (taken.device_id, taken.seq) if taken else held.get(entry.client_id)
                if holder is not None:
                    raise EntryRefused(
                        f"forwarded entry {entry.device_id} seq {entry.seq} reuses client_id "
                        f"{entry.client_id} of device {holder[0]} seq {holder[1]}")
                batch.by_client_id[entry.client_id] = entry
                found = _effects_of(entry)
                code = await self._shift_refused(batch, entry) if found and \
                    entry.kind in SHIFT_FIELD else None
                if code is not None:  # kept and forwarded, counted for nothing
                    batch.uncounted.append((entry.client_id, code))
                    found = []
                batch.effects.extend(found)
            batch.entries.extend(stored)
            self._others.update(heads)
            return len(stored)

        return await self._submit(op)

    async def _shift_refused(self, batch: _Batch, entry: Entry) -> str | None:
        """``shift_refused`` for a forwarded entry, on the entries held here and those of
        the write batch (``batch``) not committed yet."""
        shift = entry.body[SHIFT_FIELD[entry.kind]]
        opened = batch.by_client_id.get(shift) or await self._db.entry(shift)
        owner = opened.device_id if opened and opened.kind == "shift_open" else None
        closed = any(e.view == "shift_closed" and e.key == shift for e in batch.effects) \
            or await self._db.view_value("shift_closed", shift) is not None
        return shift_refused(entry, owner, closed, self.role_of(entry.device_id))

    async def stream_after(self, after_seq: int, limit: int) -> list[dict[str, Any]]:
        """The relay's receipts after ``after_seq``, in stream order, as held here."""
        return [msgpack.unpackb(b, raw=False)
                for b in await self._db.stream_after(after_seq, limit)]

    async def store_receipts(self, receipts: list[dict[str, Any]], seq: int, head: bytes,
                             contact: str, *, rewind: bool = False) -> None:
        """Keep verified receipts and the stream position (``rewind``: even an earlier one)."""

        async def op(batch: _Batch) -> None:
            for r in receipts:
                body = msgpack.packb(r, use_bin_type=True)
                batch.receipts.append((r["client_id"], r["server_seq"], r["status"], body))
                batch.stream.append((r["server_seq"], body))
            # Two links (the relay's, a LAN peer's) may bring the same receipts at once;
            # the stream is one chain, so the further position is the right one.
            if seq > self.receipts_position()[0] or rewind:
                batch.meta.update(receipts_seq=str(seq), receipts_hash=head.hex())
            if contact:
                batch.meta["last_contact"] = contact

        await self._submit(op)

    async def note_contact(self, contact: str, error: str = "") -> None:
        async def op(batch: _Batch) -> None:
            batch.meta["last_error"] = error
            if contact:
                batch.meta["last_contact"] = contact

        await self._submit(op)

    async def receive_document(self, sync_state: Any, message: bytes | None = None,
                               snapshot: bytes | None = None,
                               check: Callable[[MasterData, bytes], None] | None = None
                               ) -> None:
        """Merge a peer's document sync message or snapshot, durably; ``check`` may
        refuse the message (raising), in the writer, right before it is applied."""

        async def op(batch: _Batch) -> None:
            if snapshot is not None and self.master.is_genesis():
                self.master.apply(snapshot)  # becomes it: stored as the snapshot, once
                batch.snapshot = snapshot
            elif snapshot is not None:
                batch.chunks.extend(self.master.apply(snapshot))
            if message is not None:
                if check is not None:
                    check(self.master, message)
                batch.chunks.extend(self.master.receive_sync(sync_state, message))

        await self._submit(op)


def _later(cert: Certificate, known: bytes | None, relay_key: bytes) -> bool:
    """Whether ``cert`` should replace the certificate ``known`` of the same device: it
    runs out later (one without limits, from before certificates had them, counts as
    the oldest)."""
    if known is None:
        return True
    try:
        old = Certificate.load(known, relay_key)
    except CertificateError:
        return True
    rank = -1 if cert.not_after is None else cert.not_after
    return rank > (-1 if old.not_after is None else old.not_after)

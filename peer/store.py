"""``Till``: the Python API of one device's store.

    async with await Till.open("/var/lib/tillsync/till1") as till:
        await till.put("products", "p-bread", {"name": "Bread", "sku": "B1", "price": 320})
        shift = await till.record("shift_open", {"cashier_id": "c1", "opening_cash": 10000})
        sale = await till.record("sale", {...})
        print(sale.ticket)          # provisional ticket, e.g. "TILL1-000001"

Every write goes through one writer task that commits whatever is queued in one SQLite
transaction (group commit): under load many sales share one fsync, and a call returns
only after the transaction holding its write has committed.  One process at a time may
write a store (an exclusive lock on ``DIR/lock``); readers open it ``readonly``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar

from tillsync.peer import rules
from tillsync.peer.counter_rules import balance_in, receipt_kind
from tillsync.peer.entry_rules import client_id_problem
from tillsync.peer.errors import (
    DuplicateEntry,
    InvalidInput,
    StoreCorrupt,
    StoreError,
    StoreExists,
    StoreLocked,
    StoreNotFound,
    TillsyncError,
)
from tillsync.peer.files import check_entry_files, check_record_files
from tillsync.peer.identity import KEY_FILE, DeviceKey
from tillsync.peer.log import GENESIS_PREV, Entry, entry_bytes, seal_bytes
from tillsync.peer.master import MasterData
from tillsync.peer.storage import TillDB, disk_fault, open_lock_file
from tillsync.peer.store_base import Committed, _Batch, _stamped_effects
from tillsync.peer.store_inbound import Inbound
from tillsync.peer.store_reads import Reads, VerifyReport
from tillsync.schemas import SchemaViolation, validate_entry

log = logging.getLogger(__name__)

DB_FILE = "till.db"
META_KEYS = ("device_id", "name", "series", "store_id", "public_key", "relay_url", "relay_key",
             "receipts_seq", "receipts_hash", "last_contact", "last_error", "relay_tls_pin",
             "relay_tls_ca")
LOCK_FILE = "lock"
T = TypeVar("T")
__all__ = ["DB_FILE", "LOCK_FILE", "Till", "VerifyReport", "default_series", "is_locked",
           "utc_timestamp"]
Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utc_timestamp() -> str:
    """Now, as the RFC 3339 UTC text every timestamp of tillsync uses."""
    return _timestamp(_utc_now())


def default_series(name: str) -> str:
    """Ticket series from the device name: 'Till 3' -> 'TILL3'."""
    return re.sub(r"[^A-Z0-9]", "", name.upper())[:8] or "T"


def is_locked(path: Path) -> bool:
    """True if a process holds the store's write lock right now (e.g. ``peer run``)."""
    try:
        with open(path / LOCK_FILE, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


async def _lock(path: Path, wait: float) -> IO[str]:
    """Take the store's write lock, waiting up to ``wait`` seconds for another process."""
    handle = open_lock_file(path / LOCK_FILE)  # held for the store's life
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                continue
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise StoreLocked(
                f"{path} is being written by {holder}; stop it, or open the store read-only"
            ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()}\n")
    handle.flush()
    return handle


class Till(Inbound, Reads):
    """One device's store: master document, signed log, derived views."""

    def __init__(
        self,
        path: Path,
        db: TillDB,
        master: MasterData,
        info: dict[str, str],
        *,
        key: DeviceKey | None,
        lock: IO[str] | None,
        clock: Clock,
    ) -> None:
        self.path = path
        self.device_id = info["device_id"]
        self.name = info["name"]
        self.series = info["series"]
        self.store_id = info["store_id"]
        self.public_key = bytes.fromhex(info["public_key"])
        self.meta = info
        self._db = db
        self.master = master
        self._key = key
        self._lock = lock
        self._clock = clock
        self._head: tuple[int, bytes] = (0, GENESIS_PREV)
        self._tickets = 0
        self._shifts: dict[str, str] = {}  # shift client id -> "open" / "closed"
        self._snapshot_size = self._changes_size = 0
        self._queue: list[tuple[Callable[[_Batch], Awaitable[Any]], asyncio.Future[Any]]] = []
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._others: dict[str, tuple[int, bytes]] = {}  # other devices' heads held here
        self._keys: dict[str, bytes] = {}  # device id -> public key, of devices known here
        self._certs: dict[str, bytes] = {}  # device id -> certificate, where known
        self._roles: dict[str, tuple[bytes, str]] = {}  # device id -> (certificate, role)
        self._revoked: dict[str, tuple[int, bytes]] = {}  # device id -> (upto, record)
        self.version = 0  # bumped on every commit; see ``wait_changed``
        self.data_version = 0  # bumped on commits that add entries or document changes
        self._changed = asyncio.Event()
        self.committed = Committed({}, (), 0)  # see ``_committed``; set by ``open``
        # Told (seconds, entries) after each group commit that wrote something (metrics).
        self.on_commit: Callable[[float, int], None] | None = None

    # -- life cycle --------------------------------------------------------------------

    @classmethod
    async def init(
        cls,
        path: str | os.PathLike[str],
        *,
        name: str,
        series: str | None = None,
        store_id: str | None = None,
        key: DeviceKey | None = None,
        device_id: str | None = None,
        relay_url: str | None = None,
        relay_key: bytes | None = None,
        cert: bytes | None = None,
        tls_pin: str | None = None,
        tls_ca: str | None = None,
    ) -> dict[str, str]:
        """Create a new store in ``path``: device key, database, empty master document.

        An enrolled device passes the key and id it enrolled with, the store id and the
        relay's url and key (see ``peer.client.enroll``)."""
        root = Path(path)
        series = cls.check_new(root, name, series)
        root.mkdir(mode=0o700, parents=True, exist_ok=True)  # noqa: ASYNC240 - once, tiny
        os.chmod(root, 0o700)
        key = key or DeviceKey.generate()
        device_id = device_id or str(uuid.uuid4())
        info = {
            "device_id": device_id,
            "name": name,
            "series": series,
            "store_id": store_id or str(uuid.uuid4()),
            "public_key": key.public_bytes.hex(),
            "created_at": _timestamp(_utc_now()),
        }
        if relay_url and relay_key:
            info.update(relay_url=relay_url, relay_key=relay_key.hex())
            # How the relay's TLS certificate is checked (wss:// only; see peer.tls).
            info.update({k: v for k, v in (("relay_tls_pin", tls_pin),
                                           ("relay_tls_ca", tls_ca)) if v})
        key.write(root)
        # Built under a temporary name and renamed: a crash leaves no half-made store.
        tmp = root / (DB_FILE + ".init")
        for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
            leftover.unlink(missing_ok=True)
        db = await TillDB.open(tmp, create=True)
        try:
            await db.begin()
            await db.set_meta(info)
            await db.add_device(device_id, key.public_bytes, name)
            if cert is not None:
                await db.put_certs([(device_id, key.public_bytes, name, cert)])
            await db.compact_inside(MasterData.new(uuid.UUID(device_id).bytes).save())
            await db.commit()
            await db.checkpoint()
        finally:
            await db.close()
        os.replace(tmp, root / DB_FILE)
        return info

    @staticmethod
    def check_new(root: Path, name: str, series: str | None) -> str:
        """Refuse a bad name, series or target before anything is made; returns the series."""
        if not name.strip():
            raise InvalidInput("a device needs a name (--name)")
        series = series or default_series(name)
        if not re.fullmatch(r"[A-Z0-9]{1,12}", series):
            raise InvalidInput(f"ticket series {series!r}: use 1-12 capital letters or digits")
        if (root / DB_FILE).exists():
            raise StoreExists(f"{root} already holds a store; nothing was changed (to enroll it at a relay: `tillsync peer enroll {root} --relay URL --code CODE`)")  # noqa: E501
        if (root / KEY_FILE).exists():
            raise StoreExists(
                f"{root} holds a device key but no database (an interrupted init?); "
                "move it away and run init again"
            )
        return series

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        readonly: bool = False,
        clock: Clock = _utc_now,
        wait: float = 0.0,
    ) -> Till:
        """Open an existing store; ``readonly`` takes no lock and allows no writes.

        ``wait`` is how long to wait for another process's write lock (``peer run``
        holds it only while a sync round runs)."""
        root = Path(path)
        if not (root / DB_FILE).exists():
            raise StoreNotFound(f"no tillsync store in {root} (run `tillsync peer init {root}`)")
        lock = None if readonly else await _lock(root, wait)
        try:
            db = await TillDB.open(root / DB_FILE, readonly=readonly)
            try:
                info = {k: await db.meta(k) or "" for k in META_KEYS}
                data, snapshot_size, changes_size = await db.document()
                try:
                    master = MasterData.load(data, uuid.UUID(info["device_id"]).bytes)
                except Exception as exc:  # the Automerge binding raises plain Exception
                    raise StoreCorrupt(f"{root}: master document is damaged: {exc}") from None
                key = None if readonly else DeviceKey.read(root)
                if key is not None and key.public_bytes.hex() != info["public_key"]:
                    raise StoreCorrupt(f"{root}/{KEY_FILE} is not this store's device key")
                till = cls(root, db, master, info, key=key, lock=lock, clock=clock)
                till._snapshot_size, till._changes_size = snapshot_size, changes_size
                head = await db.head(till.device_id)
                if head is not None:
                    till._head = head
                last = await db.last_ticket(till.device_id)
                till._tickets = int(last.rsplit("-", 1)[1]) if last else 0
                await till._load_devices()
                till._committed()
            except BaseException:
                await db.close()
                raise
        except BaseException:
            if lock is not None:
                lock.close()
            raise
        if not readonly:
            till._writer = asyncio.create_task(till._write_loop(), name=f"tillsync-writer {root}")
        return till

    @property
    def closing(self) -> bool:
        """True once ``close`` has begun (or the writer has stopped): no more writes."""
        return self._closing

    async def close(self) -> None:
        """Finish queued writes, then close the database and release the lock."""
        if self._writer is not None:
            self._closing = True
            self._wake.set()
            await self._writer
            self._writer = None
        await self._db.close()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    async def __aenter__(self) -> Till:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- the writer (group commit) -----------------------------------------------------

    async def _submit(self, op: Callable[[_Batch], Awaitable[T]]) -> T:
        if self._writer is None or self._closing:
            raise StoreError(f"{self.path} is open read-only or closed; nothing was written")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((op, future))
        self._wake.set()
        return await future

    async def _write_loop(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                batch, self._queue = self._queue, []
                if batch:
                    await self._commit_batch(batch)
                elif self._closing:
                    return
        finally:
            # However the writer ends, nobody is left waiting for it.
            self._closing = True
            for _, future in self._queue:
                if not future.done():
                    future.set_exception(StoreError(f"{self.path}: the store was closed"))

    async def _commit_batch(
        self, ops: list[tuple[Callable[[_Batch], Awaitable[Any]], asyncio.Future[Any]]]
    ) -> None:
        """Prepare every queued op, then write them all in one transaction.

        An op checks its input (reading the database if it must) and adds its rows to the
        batch; one refused op does not touch the batch, so the others still commit.  The
        rows go in with one statement per table: a batch costs five trips to the
        database thread and one fsync, however many sales it holds."""
        batch = _Batch()
        started = time.perf_counter()
        outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        try:
            for op, future in ops:
                try:
                    outcomes.append((future, await op(batch), None))
                except (TillsyncError, SchemaViolation) as exc:
                    outcomes.append((future, None, exc))
            if batch.entries or batch.chunks or batch.receipts or batch.meta or batch.certs \
                    or batch.revocations or batch.snapshot:
                if 0 < len(batch.chunks) <= 500 and not (
                        batch.entries or batch.effects or batch.receipts or batch.meta
                        or batch.certs or batch.revocations or batch.snapshot):
                    await self._db.commit_changes(batch.chunks)  # one statement, one trip
                else:
                    await self._write(batch)
                if self.on_commit is not None:
                    self.on_commit(time.perf_counter() - started, len(batch.entries))
                self.meta.update(batch.meta)
                if batch.entries or batch.chunks or batch.snapshot:
                    self.data_version += 1
                self._committed()
        except Exception as exc:
            # Nothing of this batch is on disk: bring memory back to what is.
            await self._db.rollback()
            await self._reload()
            failure = disk_fault(self.path, exc) or StoreError(f"{self.path}: write failed, nothing was stored: {exc}")  # noqa: E501
            for _, future in ops:
                if not future.done():
                    future.set_exception(failure)
            return
        for future, result, error in outcomes:
            if future.done():
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)
        if batch.snapshot is not None:
            self._snapshot_size, self._changes_size = len(batch.snapshot), 0
        if batch.chunks:
            self._changes_size += sum(len(c) for c in batch.chunks)
            await self._maybe_compact()

    async def _load_devices(self) -> None:
        self._keys = {d: key for d, (key, _) in (await self._db.devices()).items()}
        self._certs = await self._db.certs()
        self._revoked = await self._db.revocations()
        self._others = {d: h for d, h in (await self._db.heads()).items() if d != self.device_id}

    def _committed(self) -> None:
        """Note where the store stands, now that memory and disk agree again, and wake
        the waiters: a snapshot of a few heads, taken once per commit."""
        self.committed = Committed(self.heads(), tuple(self.master.heads()),
                                   self.receipts_position()[0])
        self._notify()

    def _notify(self) -> None:
        self.version += 1
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    def touch_files(self) -> None:
        """A file came into ``DIR/files`` (``peer.files``): wake the links to offer it."""
        self.data_version += 1
        self._notify()

    async def wait_changed(self, seen: int, within: float | None = None) -> int:
        """Wait until something was committed after version ``seen`` (or ``within``
        seconds); returns the version now.  Links use it to push what is new."""
        if self.version == seen:  # not wait_for: it can eat a cancellation (Python 3.11)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(within):
                    await self._changed.wait()
        return self.version

    async def _write(self, batch: _Batch) -> None:
        """One transaction; each statement is a trip to the database thread, so the
        empty ones are skipped."""
        await self._db.begin()
        if batch.entries:
            await self._db.insert_entries(batch.entries)
        if batch.effects:
            await self._db.apply_effects(batch.effects)
        if batch.snapshot is not None:
            await self._db.compact_inside(batch.snapshot)
        if batch.uncounted:
            await self._db.add_uncounted(batch.uncounted)
        if batch.chunks:
            await self._db.append_changes(batch.chunks)
        if batch.receipts:
            await self._db.store_receipts(batch.receipts)
            await self._db.append_stream(batch.stream)
        if batch.certs:
            await self._db.put_certs(batch.certs)
        if batch.revocations:
            await self._db.put_revocations(batch.revocations)
        if batch.meta:
            await self._db.set_meta(batch.meta)
        await self._db.commit()

    async def _reload(self) -> None:
        await self._load_devices()
        data, self._snapshot_size, self._changes_size = await self._db.document()
        self.master = MasterData.load(data, uuid.UUID(self.device_id).bytes)
        self._head = await self._db.head(self.device_id) or (0, GENESIS_PREV)
        last = await self._db.last_ticket(self.device_id)
        self._tickets = int(last.rsplit("-", 1)[1]) if last else 0
        self._shifts.clear()

    async def _maybe_compact(self) -> None:
        """Fold the change chunks into a new snapshot once they outgrow it.

        Compaction is its own transaction; if it fails, the old snapshot and every chunk
        are still there, so the writer logs it and carries on."""
        if self._changes_size <= max(self._snapshot_size, 64 * 1024):
            return
        try:
            snapshot = self.master.save()
            await self._db.compact(snapshot)
            self._snapshot_size, self._changes_size = len(snapshot), 0
        except Exception:
            log.exception("%s: compacting the master document failed; will retry", self.path)

    # -- master data -------------------------------------------------------------------

    def get(self, collection: str, record_id: str) -> dict[str, Any] | None:
        """One master-data record as plain Python values (``pin_hash`` left out)."""
        record = self.master.get(collection, record_id)
        if record is not None:
            record.pop("pin_hash", None)
        return record

    def all(self, collection: str) -> dict[str, dict[str, Any]]:
        records = self.master.all(collection)
        for record in records.values():
            record.pop("pin_hash", None)
        return records

    async def put(
        self, collection: str, record_id: str, body: Mapping[str, object]
    ) -> dict[str, Any]:
        """Create or update a master-data record; returns it as stored.  Raises
        ``Forbidden`` for a price or settings change on a device enrolled as a till: the
        relay and every other till would refuse it, and this till would fall out of
        document sync with them (``peer.master.roles``)."""
        check_record_files(self.path, collection, body)  # a file it names must be held here

        async def op(batch: _Batch) -> dict[str, Any]:
            self._may_edit(collection, record_id, body)
            batch.chunks.extend(self.master.put(collection, record_id, body))
            record = self.get(collection, record_id)
            assert record is not None
            return record

        return await self._submit(op)

    async def delete(self, collection: str, record_id: str) -> None:
        """Delete a master-data record (``MasterData.delete``: a delete wins over
        concurrent edits); a product only from a back-office or admin device."""

        async def op(batch: _Batch) -> None:
            self._may_edit(collection, record_id, None)
            batch.chunks.extend(self.master.delete(collection, record_id))

        await self._submit(op)

    def check_pin(self, cashier_id: str, pin: str) -> bool:
        from tillsync.peer.master import check_pin

        record = self.master.get("cashiers", cashier_id)
        return bool(record and "pin_hash" in record and check_pin(pin, record["pin_hash"]))

    # -- the log -----------------------------------------------------------------------

    async def record(
        self, kind: str, body: Mapping[str, Any], *, client_id: str | None = None
    ) -> Entry:
        """Validate, number, chain, sign and durably append one entry.

        ``client_id`` is the idempotency key: pass the one your front end made and a retry
        after a crash returns the entry already stored instead of a duplicate.
        """
        validate_entry(kind, body)
        check_entry_files(self.path, kind, body)  # a file it names must be held here
        body_bytes = entry_bytes(body)  # refuses floats, huge ints, odd types before queueing
        if client_id is not None and (problem := client_id_problem(  # uppercase taken lowercase
                client_id := str(client_id).lower())):
            raise InvalidInput(problem[1])
        return await self._submit(lambda batch: self._append(batch, kind, body, body_bytes,
                                                             client_id))

    async def _append(
        self, batch: _Batch, kind: str, body: Mapping[str, Any], body_bytes: bytes,
        client_id: str | None,
    ) -> Entry:
        assert self._key is not None
        if client_id is not None:
            existing = batch.by_client_id.get(client_id) or await self._db.entry(client_id)
            if existing is not None:
                if (existing.device_id, existing.kind, existing.body_bytes) == (
                    self.device_id, kind, body_bytes
                ):
                    return existing  # a retry: same entry, nothing new
                raise DuplicateEntry(
                    f"client_id {client_id} is already used by another entry "
                    f"({existing.kind} seq {existing.seq} of device {existing.device_id})"
                )
        await rules.check(kind, body, rules.Lookup(
            self.master.has, self._shift_state, lambda cid: self._entry_in(batch, cid),
            self.device_id, fields=self.master.fields, balance=lambda c: balance_in(
                self._db, batch.effects, c), receipt_kind=lambda c: receipt_kind(self._db, c),
            role=self.role_of(self.device_id)))
        seq, prev = self._head[0] + 1, self._head[1]
        ticket = f"{self.series}-{self._tickets + 1:06d}" if kind == "sale" else None
        entry = seal_bytes(
            self._key,
            client_id=client_id or str(uuid.uuid4()),
            device_id=self.device_id,
            seq=seq,
            prev=prev,
            kind=kind,
            client_created_at=_timestamp(self._clock()),
            ticket=ticket,
            body_bytes=body_bytes,
        )
        new_effects = _stamped_effects(entry, body)
        # Checks passed: from here on only memory changes, undone by _reload on failure.
        batch.entries.append(entry)
        batch.effects.extend(new_effects)
        batch.by_client_id[entry.client_id] = entry
        for effect in new_effects:
            if effect.view == "shift_opened":
                self._shifts.setdefault(effect.key, "open")
            elif effect.view == "shift_closed":
                self._shifts[effect.key] = "closed"
        self._head = (seq, entry.hash)
        if ticket is not None:
            self._tickets += 1
        return entry

    async def _shift_state(self, shift_client_id: str) -> str | None:
        if shift_client_id not in self._shifts:
            state = await self._db.shift_state(shift_client_id)
            if state is None:
                return None  # not cached: it may be opened later in this very batch
            self._shifts[shift_client_id] = state
        return self._shifts[shift_client_id]

    async def _entry_in(self, batch: _Batch, client_id: str) -> Entry | None:
        return batch.by_client_id.get(client_id) or await self._db.entry(client_id)

    async def entry(self, client_id: str) -> Entry | None:
        return await self._db.entry(client_id)

    async def entries(self, kind: str | None = None) -> list[Entry]:
        return [e async for e, _ in self._db.entries(kind=kind)]

    # -- sync with the relay -----------------------------------------------------------

    @property
    def key(self) -> DeviceKey:
        if self._key is None:
            raise StoreError(f"{self.path} is open read-only; syncing needs it writable")
        return self._key

    @property
    def relay_key(self) -> bytes | None:
        return bytes.fromhex(self.meta["relay_key"]) if self.meta.get("relay_key") else None

    def receipts_position(self) -> tuple[int, bytes]:
        """Position and hash of the last receipt of the relay's stream held here."""
        seq = int(self.meta.get("receipts_seq") or 0)
        head = bytes.fromhex(self.meta["receipts_hash"]) if self.meta.get("receipts_hash") \
            else bytes(32)
        return seq, head

    async def entries_after(self, heads: Mapping[str, int], limit: int,
                            upto: Mapping[str, int] | None = None) -> list[Entry]:
        """Entries this store holds beyond ``heads`` (device -> seq), oldest first, and
        committed: none beyond ``upto``, by default ``committed.heads``.  A batch in flight
        has moved the heads in memory and its rows are readable on the writer's connection,
        but it may still fail and its seqs go to other entries: what is sent to a peer or
        the relay must be durable first."""
        out: list[Entry] = []
        for device_id, held in (self.committed.heads if upto is None else upto).items():
            if len(out) >= limit:
                break
            revoked = self.revoked_upto(device_id)
            after = heads.get(device_id, 0)
            if held <= after or (revoked is not None and after >= revoked):
                continue  # no query: nothing newer, or a revoked device's (not passed on)
            found = await self._db.entries_after(device_id, after, held, limit - len(out))
            out += found if revoked is None else [e for e in found if e.seq <= revoked]
        return out

    def heads(self) -> dict[str, int]:
        """device id -> highest seq held here, for every device (this one included)."""
        heads = {d: seq for d, (seq, _) in self._others.items()}
        if self._head[0]:
            heads[self.device_id] = self._head[0]
        return heads

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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar

import msgpack

from tillsync.peer import rules
from tillsync.peer.cert import Certificate, CertificateError, Revocation
from tillsync.peer.entry_rules import client_id_problem, entry_problem
from tillsync.peer.errors import (
    DuplicateEntry,
    EntryRefused,
    Forbidden,
    InvalidInput,
    StoreCorrupt,
    StoreError,
    StoreExists,
    StoreLocked,
    StoreNotFound,
    TillsyncError,
)
from tillsync.peer.identity import KEY_FILE, DeviceKey
from tillsync.peer.log import GENESIS_PREV, ChainBreak, Entry, entry_bytes, seal_bytes, verify_chain
from tillsync.peer.master import MasterData
from tillsync.peer.master.roles import MANAGING_ROLES, guarded_edit
from tillsync.peer.storage import TillDB, disk_fault, open_lock_file
from tillsync.peer.views import Effect, effects, fold, order_of, stamped, stock_row
from tillsync.schemas import SchemaViolation, validate_entry

log = logging.getLogger(__name__)

DB_FILE = "till.db"
META_KEYS = ("device_id", "name", "series", "store_id", "public_key", "relay_url", "relay_key",
             "receipts_seq", "receipts_hash", "last_contact", "last_error", "relay_tls_pin",
             "relay_tls_ca")
LOCK_FILE = "lock"
T = TypeVar("T")
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


def _stamped_effects(entry: Entry, body: Mapping[str, Any]) -> list[Effect]:
    """An entry's effects, its "set" ones carrying its place (``order_of``)."""
    return stamped(effects(entry.kind, entry.client_id, body),
                   order_of(entry.client_created_at, entry.device_id, entry.seq))


class Till:
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
                self.meta.update(batch.meta)
                if batch.entries or batch.chunks or batch.snapshot:
                    self.data_version += 1
                self._notify()
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

    def _notify(self) -> None:
        self.version += 1
        event, self._changed = self._changed, asyncio.Event()
        event.set()

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

        async def op(batch: _Batch) -> dict[str, Any]:
            self._may_edit(collection, record_id, body)
            batch.chunks.extend(self.master.put(collection, record_id, body))
            record = self.get(collection, record_id)
            assert record is not None
            return record

        return await self._submit(op)

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
        await rules.check(kind, body, rules.Lookup(self.master.has, self._shift_state, lambda
                          cid: self._entry_in(batch, cid), self.device_id))
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

    async def entries_after(self, heads: Mapping[str, int], limit: int) -> list[Entry]:
        """Entries this store holds beyond ``heads`` (device -> seq), oldest first."""
        out: list[Entry] = []
        for device_id in await self._db.devices():
            if len(out) >= limit:
                break
            upto = self.revoked_upto(device_id)
            after = heads.get(device_id, 0)
            if upto is not None and after >= upto:
                continue  # a revoked device's later entries are not passed on
            found = await self._db.entries_after(device_id, after, limit - len(out))
            out += found if upto is None else [e for e in found if e.seq <= upto]
        return out

    def heads(self) -> dict[str, int]:
        """device id -> highest seq held here, for every device (this one included)."""
        heads = {d: seq for d, (seq, _) in self._others.items()}
        if self._head[0]:
            heads[self.device_id] = self._head[0]
        return heads

    @property
    def cert(self) -> bytes | None:
        """This device's certificate from the relay, once it has one."""
        return self._certs.get(self.device_id)

    def certs(self) -> dict[str, bytes]:
        return dict(self._certs)

    def _may_edit(self, collection: str, record_id: str, body: Mapping[str, object]) -> None:
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
                batch.effects.extend(_effects_of(entry))
            batch.entries.extend(stored)
            self._others.update(heads)
            return len(stored)

        return await self._submit(op)

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
                               snapshot: bytes | None = None) -> None:
        """Merge a peer's document sync message or snapshot, durably."""

        async def op(batch: _Batch) -> None:
            if snapshot is not None and self.master.is_genesis():
                self.master.apply(snapshot)  # becomes it: stored as the snapshot, once
                batch.snapshot = snapshot
            elif snapshot is not None:
                batch.chunks.extend(self.master.apply(snapshot))
            if message is not None:
                batch.chunks.extend(self.master.receive_sync(sync_state, message))

        await self._submit(op)

    async def receipts(self, status: str | None = None) -> list[dict[str, Any]]:
        """The latest receipt of every entry the relay has answered (any device)."""
        return [msgpack.unpackb(b, raw=False) for b in await self._db.receipts(status)]

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
        async for entry, _ in self._db.entries():
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

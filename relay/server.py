"""The relay's websocket server: a thin asyncio layer around ``RelayLink`` and ``ingest``.

One task per connection reads frames and feeds the link; a second one, once the device
is authenticated, pushes receipts (by stream position, read from the database) and
document changes whenever the store's hub signals something new.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import hashlib
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import automerge.core as am
import websockets
from websockets.asyncio.server import ServerConnection, serve

from tillsync.peer import logfmt
from tillsync.peer.cert import CERT_VALIDITY, Certificate, Revocation
from tillsync.peer.errors import InvalidInput
from tillsync.peer.filelink import WRONG_TYPE, FileLink, FilePolicy
from tillsync.peer.identity import DeviceKey
from tillsync.peer.log import Entry
from tillsync.peer.master.roles import forbidden_changes, refusal
from tillsync.peer.shutdown import Deadlines, cancel_and_wait
from tillsync.peer.store import utc_timestamp
from tillsync.peer.sync.engine import (
    Authenticated,
    DocMessage,
    EnrollRequested,
    EntriesReceived,
    FileChunk,
    FileOffered,
    HelloReceived,
    LinkFailed,
    RelayLink,
    RemoteError,
)
from tillsync.peer.sync.frames import TRANSPORT_MAX
from tillsync.peer.sync.receipts import relay_behind
from tillsync.peer.tls import server_context
from tillsync.relay import amrepo, metrics
from tillsync.relay.documents import Hubs, StoreHub, Wake
from tillsync.relay.faults import storage_fault
from tillsync.relay.files import default_policy, store_files, sweep_partials
from tillsync.relay.http import handler as api_handler
from tillsync.relay.http import new_token
from tillsync.relay.ingest import Batch, IngestResult, ingest_all
from tillsync.relay.limits import Gate, Limits, LinkWatch
from tillsync.relay.prepare import Checked, adopt, pack_for_worker, prepare, prepare_packed
from tillsync.relay.shutdown import InFlight, close_bounded, prepare_worker, stop_serving
from tillsync.relay.storage import RelayStorage, open_storage, with_retries
from tillsync.relay.storage.base import DeviceRow
from tillsync.relay.storekeys import seal, unseal

log = logging.getLogger("tillsync.relay")

DB_FILE = "relay.db"
RECEIPTS_PER_FRAME = 500
MAX_JOBS_PER_COMMIT = 32
# Entries frames of one connection taken in before the first of them is answered: the
# connection reads, prepares and queues its next batch while the last one is committed.
INGEST_WINDOW = 4
# With ``relay serve --prepare-worker N``, batches of N entries or more are prepared in a
# worker process; 200 is where that starts to pay for the transfer.  By default every
# batch is prepared on the event loop: the worker decodes each body and the event loop
# decodes it again, and the transfer costs both processes, so it takes more CPU a sale
# than it moves off the loop (tools.bench_relay, 2-core VM, other work beside it: relay
# CPU 70.9 / 73.1 us a sale with a worker, 62.1 / 61.1 without, sales/s no lower).  It is
# for a machine with an idle core and a relay short of wall time, not of CPU.
POOL_MIN_BATCH = 200


# The cyclic garbage collector's thresholds in a relay process.  Under load the relay
# holds tens of thousands of entries in flight (queued batches and their bodies), none of
# them in a reference cycle; every pass over them is wasted.  Over 100,000 sales
# (tools.bench_relay, GC timed with gc.callbacks in the relay process) the collector took
# 1.6-2.3 s of the event loop with CPython's defaults (700, 10, 10), 0.56-0.75 s with
# (50000, 20, 10), 0.03-0.09 s with these.  The relay's memory stayed the same (about
# 210 MB at its peak).  The cycles there are (exceptions, closed connections) are still
# collected: young ones whenever 100,000 more objects have been allocated than freed,
# older ones in rarer passes.
GC_THRESHOLDS = (100_000, 100, 100)


def tune_gc() -> None:
    """Set ``GC_THRESHOLDS``, and leave what is alive now (modules, storage, documents)
    out of every later pass: a relay process calls this once it listens."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def code_hash(code: str) -> bytes:
    return hashlib.sha256(b"tillsync-enroll/" + code.strip().upper().encode()).digest()


def relay_key(data: Path) -> DeviceKey:
    """The relay's signing key, made on first use (owner-only file, like a device key)."""
    data.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not (data / "relay.key").exists():
        # Several workers may start at once: each writes a whole key under its own name
        # and links it into place; the first link wins, the others read the winner's.
        tmp = f"relay.key.{os.getpid()}.tmp"
        (data / tmp).unlink(missing_ok=True)
        DeviceKey.generate().write(data, tmp)
        try:
            os.link(data / tmp, data / "relay.key")
        except FileExistsError:
            pass
        finally:
            (data / tmp).unlink(missing_ok=True)
    return DeviceKey.read(data, "relay.key")


def die_with_parent(parent: int) -> None:
    """In a worker: exit when the relay process is gone, even after a kill -9 (the pool
    cannot tell its workers then, and they would live on as orphans)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="watch-relay", daemon=True).start()


@dataclass
class _Job:
    """One entries frame waiting for the writer: what ingest decides, the hub its receipts
    are published to, and the future its result goes to."""

    hub: StoreHub
    batch: Batch
    done: asyncio.Future[IngestResult]


@dataclass
class RelayConfig:
    data: Path  # the relay's key; and its SQLite database unless ``db`` is given
    host: str = "127.0.0.1"
    port: int = 8765
    db: str | None = None  # postgresql://... : a database shared with other relay processes
    reuse_port: bool = False  # SO_REUSEPORT: several processes listen on one port
    db_wait: float = 60.0  # seconds to keep retrying a database that cannot be reached
    tls_cert: str | None = None  # PEM files: serve wss:// instead of ws://
    tls_key: str | None = None
    cert_days: float = CERT_VALIDITY / 86400  # validity of the device certificates issued
    limits: Limits = field(default_factory=Limits)  # handshake and idle timeouts (limits.py)
    files: FilePolicy = field(default_factory=default_policy)  # size and types taken
    deadlines: Deadlines = field(default_factory=Deadlines)  # of a graceful stop
    prepare_worker_min: int | None = None  # batches this large go to a worker process


class Relay:
    """Everything one relay process holds: storage, key, hubs."""

    def __init__(self, storage: RelayStorage, key: DeviceKey, data: Path | None = None
                 ) -> None:
        self.storage = storage
        self.data = data  # where the files are kept (relay.files); None: no files taken
        self.files = default_policy()  # ``relay serve --max-file-mib``, ``--file-types``
        self.key = key  # the relay's own key: it seals the store keys
        self._store_keys: dict[str, DeviceKey] = {}  # a store's key never changes
        self.cert_validity = CERT_VALIDITY  # seconds; ``relay serve --cert-days``
        self.hubs = Hubs(storage)
        self.gate = Gate(Limits())  # ``relay serve --handshake-timeout`` etc.
        self._jobs: asyncio.Queue[_Job] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._pool: ProcessPoolExecutor | None = None
        self.prepare_worker_min: int | None = None  # None: prepare on the event loop
        self.batches = InFlight()  # taken in, not yet answered
        self.closing = asyncio.Event()  # stopping: take in no more entries frames

    @classmethod
    async def open(cls, data: Path, db: str | None = None, *, db_wait: float = 60.0
                   ) -> Relay:
        """The relay on ``data`` (its key, and its SQLite file), or on the PostgreSQL
        database ``db`` shared with other relay processes (the same key in each)."""
        key = relay_key(data)
        return cls(await open_storage(db, data / DB_FILE, wait=db_wait), key, data)

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
        if self._writer is not None:  # cancel_and_wait: never eats a cancellation of ours
            await cancel_and_wait([self._writer], Deadlines().cancel, "relay writer")
        await self.storage.close()

    async def new_code(self, store: str, name: str, role: str = "till",
                       ttl: timedelta = timedelta(hours=24)) -> str:
        """A one-time enrollment code for a device of ``store``."""
        raw = os.urandom(10)
        code = "-".join(raw.hex().upper()[i:i + 5] for i in range(0, 20, 5))
        expires = (datetime.now(UTC) + ttl).isoformat(timespec="seconds").replace("+00:00", "Z")
        if await self.storage.store_key(store) is None and not await self.storage.devices(
                store):  # a new store: its own key (one with devices but no row keeps
            # signing with the relay's key, which they pinned)
            key = DeviceKey.generate()
            await self.storage.add_store_key(store, key.public_bytes,
                                             seal(self.key, store, key), utc_timestamp())
        await self.storage.add_code(store, code_hash(code), name, role, expires)
        return code

    async def store_key(self, store: str) -> DeviceKey:
        """The key that signs for ``store`` (``relay/storekeys.py``): its own, or the
        relay's for a store made before store keys."""
        key = self._store_keys.get(store)
        if key is None:
            row = await self.storage.store_key(store)
            public, sealed = row if row is not None else (None, None)
            key = self.key if sealed is None or public is None else \
                unseal(self.key, store, sealed, public)
            if row is not None:  # a store with no row yet may get its own key
                self._store_keys[store] = key
        return key

    async def certify(self, device: DeviceRow) -> bytes:
        """The device's certificate: what tills check each other by on the LAN."""
        return Certificate.issue(await self.store_key(device.store), store=device.store,
                                 device=device.device_id, name=device.name, role=device.role,
                                 public_key=device.public_key, now=time.time(),
                                 validity=self.cert_validity).raw

    async def new_token(self, store: str) -> str:
        """A new token of the reporting API for ``store`` (the relay keeps its hash)."""
        if not await self.storage.devices(store):
            raise InvalidInput(f"the relay has no store {store!r} (no device enrolled in it)")
        token, digest = new_token()
        await self.storage.add_admin_token(store, digest, utc_timestamp())
        return token

    async def revoke(self, store: str, device: str) -> DeviceRow:
        """Revoke a device of ``store``, named by its id or its name (which must then be
        unique in the store).  Raises ``InvalidInput`` if there is no such device."""
        row = await self.storage.device(store, device)
        if row is None:
            named = [d for d in await self.storage.devices(store) if d.name == device]
            if len(named) > 1:
                raise InvalidInput(f"{len(named)} devices of store {store} are named "
                                   f"{device!r}: revoke one by its id")
            if not named:
                raise InvalidInput(f"store {store} has no device with the id or name "
                                   f"{device!r}")
            row = named[0]
        revoked = await self.storage.revoke(store, row.device_id, utc_timestamp())
        assert revoked is not None and revoked.revoked_upto is not None
        log.warning("revoked device %s (%s) of store %s: its entries after seq %d are "
                    "refused", revoked.device_id, revoked.name, store, revoked.revoked_upto)
        return revoked

    async def revocations(self, store: str) -> list[bytes]:
        """The store's revocations, signed: every device learns them in ``welcome``."""
        key = await self.store_key(store)
        return [Revocation.issue(key, store=store, device=d.device_id,
                                 upto=d.revoked_upto or 0, at=d.revoked_at or "").raw
                for d in await self.storage.revocations(store)]

    # -- one connection ----------------------------------------------------------------

    async def handle(self, ws: ServerConnection) -> None:
        peer = f"{ws.remote_address}"
        logfmt.bind(connection=logfmt.address(ws.remote_address))
        watch = LinkWatch(self.gate, ws, peer)
        if not await watch.admit():
            return
        if ws.request is not None and amrepo.wanted(ws.request.path):
            try:  # an automerge-repo client, not a device: the same limits
                await amrepo.serve(self, ws, watch)
            finally:
                await watch.end()
            return
        # Nothing reads the opening handshake's headers after it: a device's link may
        # stay open for days, and they are about 2 KiB of it.
        for message in (ws.request, ws.response):
            if message is not None:
                message.headers.clear()
        link = RelayLink(nonce=os.urandom(32))
        pump: asyncio.Task[None] | None = None
        state: dict[str, Any] = {}
        # Frames leave in the order the link queued them: whoever sends (this handler or
        # the pump) takes the link's queue and sends it whole under this lock.
        sending = watch.sending
        # The pump is the only place that generates this connection's document sync
        # messages (one SyncState, one generator): the handler wakes it instead.
        wake = Wake()
        # Batches queued for the writer, answered in order by ``answering``; both made
        # when a batch comes and gone once all are answered (an idle link holds neither).
        queued: asyncio.Queue[_Job] | None = None
        answering: asyncio.Task[None] | None = None
        state["taken"] = state["answered"] = 0  # entries frames of this link
        try:
            async for frame in ws:
                watch.heard()
                link.receive_data(frame)
                for event in link.events_received():
                    if isinstance(event, HelloReceived):
                        logfmt.bind(store=event.store, device=event.device)
                        device = await self.storage.device(event.store, event.device)
                        if device is None:
                            log.warning("%s: unknown device %s of store %s", peer,
                                        event.device, event.store)
                            link.fail("unknown_device", "this device is not enrolled in this "
                                      "store; enroll it with a code from `tillsync relay "
                                      "enroll`")
                        elif device.revoked:
                            log.warning("%s: revoked device %s (%s) of store %s refused",
                                        peer, event.device, device.name, event.store)
                            link.fail("revoked", "this device has been revoked; if it is "
                                      "back in safe hands, enroll it as a new device with "
                                      "a new code: tillsync peer enroll DIR --relay URL "
                                      "--code CODE --new-device")
                        else:
                            state["device"] = device
                            link.challenge(device.public_key,
                                           await self.store_key(event.store))
                    elif isinstance(event, EnrollRequested):
                        logfmt.bind(device=event.device)
                        row = await self.storage.enroll(code_hash(event.code), event.device,
                                                        event.name, event.public_key,
                                                        utc_timestamp())
                        if isinstance(row, str):
                            log.warning("%s: enrollment refused: %s", peer, row)
                            link.fail("bad_code", row)
                        else:
                            logfmt.bind(store=row.store)
                            log.info("enrolled %s (%s) in store %s", row.device_id, row.name,
                                     row.store)
                            link.enrolled(row.store, row.device_id, await self.certify(row),
                                          await self.store_key(row.store))
                    elif isinstance(event, Authenticated):
                        watch.logged_in()
                        hub = await self.hubs.get(event.store)
                        state["hub"] = hub
                        metrics.CONNECTED.inc()  # taken off in ``finally``, as is the hub
                        state["sync"] = am.SyncState()
                        await self.storage.touch(event.store, event.device, utc_timestamp())
                        position = await self.storage.stream_position(event.store)
                        link.welcome(await self.storage.heads(event.store), position,
                                     await self.certify(state["device"]),
                                     await self.revocations(event.store))
                        if event.receipts_after > position:
                            log.warning("%s: device %s of store %s holds receipts up to %d, "
                                        "the relay only up to %d: restore the relay's backup",
                                        peer, event.device, event.store,
                                        event.receipts_after, position)
                            link.fail("relay_behind",  # = RELAY_BEHIND, a literal like every code
                                      relay_behind(event.receipts_after, position), fatal=False)
                        if event.doc_empty and not hub.doc.is_genesis():
                            link.send_snapshot(hub.doc.save())
                            # The device answers with its first sync message once it
                            # holds the snapshot; one of ours before that would know
                            # nothing of its heads, and carry a filter of every change.
                            state["doc_after_device"] = True
                        hub.watch(wake)
                        wake.set()  # its first pass sends the first document message
                        pump = asyncio.create_task(self._pump(
                            ws, link, hub, state, sending, wake,
                            min(event.receipts_after, position)))
                        log.info("%s: device %s of store %s connected", peer, event.device,
                                 event.store)
                    elif isinstance(event, EntriesReceived):
                        if self.closing.is_set():
                            continue  # not taken in, so not stored: its till sends it again
                        self.batches.taken()
                        state["taken"] += 1
                        job = await self._ingest(state["hub"], event, link.device)
                        if answering is None or answering.done():
                            queued = asyncio.Queue(INGEST_WINDOW)
                            answering = asyncio.create_task(
                                self._answer(ws, link, queued, sending, peer, state))
                        assert queued is not None
                        await queued.put(job)  # waits while the window is full
                    elif isinstance(event, DocMessage):
                        state["doc_after_device"] = False
                        await self._doc(link, state["hub"], state["sync"], event.data)
                        wake.set()  # the pump answers
                    elif isinstance(event, FileOffered | FileChunk):
                        if self.data is not None and "hub" in state:
                            if "files" not in state:  # made by a link's first file frame
                                state["files"] = FileLink(
                                    link, store_files(self.data, state["hub"].store),
                                    self.files)
                            await state["files"].handle(event)
                        else:
                            link.send_file("file_refused", event.sha256, code=WRONG_TYPE,
                                           message="this relay takes no files")
                    elif isinstance(event, LinkFailed | RemoteError):
                        log.warning("%s: %s: %s", peer, event.code, event.message)
                await self._flush(ws, link, sending)
                if link.closed:
                    break
        except websockets.ConnectionClosed:
            pass
        except Exception as exc:
            await self._internal_error(ws, link, sending, peer, exc)
        finally:
            await watch.end()
            if answering is not None:
                answering.cancel()
            if pump is not None:
                pump.cancel()
            self.batches.settled(state["taken"] - state["answered"])  # given up
            if "hub" in state:
                state["hub"].unwatch(wake)
                metrics.CONNECTED.dec()
            await ws.close()

    @staticmethod
    async def _flush(ws: ServerConnection, link: RelayLink, sending: asyncio.Lock,
                     shared: bytes | None = None) -> None:
        """Send what the link has queued, then ``shared`` (an already encoded frame), in
        order even when the handler and the pump both send."""
        async with sending:
            for out in link.data_to_send():
                await ws.send(out)
            if shared is not None:
                await ws.send(shared)

    async def _internal_error(self, ws: ServerConnection, link: RelayLink,
                              sending: asyncio.Lock, peer: str, exc: BaseException) -> None:
        """A fault of the relay's storage: one line naming it, and its own code to the
        device (``relay.faults``).  Anything else is a bug of ours, not the device's: log
        it, tell the device only that much."""
        fault = storage_fault(exc)
        if fault is not None:
            log.error("%s: %s: %s", peer, fault.code, fault.cause)
            link.fail(fault.code, fault.message)
        else:
            log.exception("%s: internal error", peer)
            link.fail("internal", "the relay hit an internal error; try again later")
        with contextlib.suppress(websockets.ConnectionClosed):
            await self._flush(ws, link, sending)

    async def _answer(self, ws: ServerConnection, link: RelayLink, queued: asyncio.Queue[_Job],
                      sending: asyncio.Lock, peer: str, state: dict[str, Any]) -> None:
        """Answer a connection's batches as their commits land, in the order they came;
        returns once none is left (the handler makes a new queue and task for the next)."""
        while not queued.empty():
            job = queued.get_nowait()
            try:
                result = await job.done
            except Exception as exc:
                await self._internal_error(ws, link, sending, peer, exc)
                await ws.close()
                return
            link.send_ingested(result.heads, len(job.batch.entries), result.position)
            with contextlib.suppress(websockets.ConnectionClosed):
                await self._flush(ws, link, sending)
            state["answered"] += 1
            self.batches.settled()

    async def _ingest(self, hub: StoreHub, event: EntriesReceived, sender: str) -> _Job:
        """Prepare a batch and queue it for the writer; its job's future has the result."""
        if hub.stale:  # another process changed the catalogue: decide with the new one
            await self.hubs.refresh(hub)
        keys = {}  # revoked devices too: ingest refuses only their later entries
        for device_id in {e.device_id for e in event.entries}:
            device = await self.storage.device(hub.store, device_id)
            if device is not None:
                keys[device_id] = device.public_key
        batch = Batch(hub.store, event.entries, keys, hub.product,
                      await self.store_key(hub.store), await self._prepare(event.entries),
                      sender, hub.customer)
        job = _Job(hub, batch, asyncio.get_running_loop().create_future())
        await self._jobs.put(job)
        if self._writer is None:
            # Its own context: the writer serves every connection, so its log lines name
            # none (a task copies the context of the one that starts it).
            self._writer = asyncio.create_task(self._write_loop(), name="relay-writer",
                                               context=contextvars.Context())
        return job

    async def _prepare(self, entries: list[Entry]) -> Checked:
        """Hashes, bodies and schema checks of a batch, here; or, for a batch of at least
        ``prepare_worker_min`` entries, in a worker process, so most of this work (~14 us
        a sale) runs on another core than the event loop (``POOL_MIN_BATCH``).  The
        worker answers hashes, problems and line amounts, not bodies: the loop decodes
        those again (~5 us a sale), cheaper for both processes than pickling them both
        ways."""
        if self.prepare_worker_min is None or len(entries) < self.prepare_worker_min:
            return prepare(entries)
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                initializer=prepare_worker, initargs=(os.getpid(),))
        loop = asyncio.get_running_loop()
        packed = await loop.run_in_executor(self._pool, prepare_packed,
                                            pack_for_worker(entries))
        return adopt(entries, packed)

    async def _write_loop(self) -> None:
        """Group commit: every batch queued meanwhile, from any connection and store,
        goes into one transaction (one fsync), decided in arrival order."""
        while True:
            jobs = [await self._jobs.get()]
            while not self._jobs.empty() and len(jobs) < MAX_JOBS_PER_COMMIT:
                jobs.append(self._jobs.get_nowait())
            tries = [0]
            outcomes: list[IngestResult | Exception]
            try:
                outcomes = list(await with_retries(
                    self.storage, f"ingest of {len(jobs)} batches",
                    partial(self._commit, jobs, tries)))
            except Exception as exc:  # nothing of these batches was stored
                fault = storage_fault(exc)
                if fault is None:  # something in a batch's content, maybe: try them alone
                    log.exception("ingest of %d batches failed", len(jobs))
                    outcomes = await self._isolate(jobs, exc, tries)
                else:
                    log.error("ingest of %d batches failed, nothing stored: %s: %s",
                              len(jobs), fault.code, fault.cause)
                    outcomes = [exc] * len(jobs)
            for job, outcome in zip(jobs, outcomes, strict=True):
                if isinstance(outcome, Exception):
                    if not job.done.done():
                        job.done.set_exception(outcome)
                    continue
                result = outcome
                if result.receipts:  # in commit order, so pumps see the stream in order
                    job.hub.publish(result.receipts, result.position, RECEIPTS_PER_FRAME,
                                    result.packed)
                elif tries[0] > 1:
                    # A retry after a commit whose answer was lost finds the batch stored
                    # already: its receipts are in the database, the pumps read them.
                    job.hub.notify()
                if not job.done.done():
                    job.done.set_result(result)

    async def _commit(self, jobs: list[_Job], tries: list[int], decide: bool = True
                      ) -> list[IngestResult]:
        """One transaction for the jobs.  Run whole again after a deadlock or a lost
        connection: the rollback undid everything, and ingest decides afresh from what is
        stored (a batch whose commit did happen is then found stored: duplicates)."""
        tries[0] += 1
        started = time.perf_counter()
        async with self.storage.transaction() as txn:
            results = await ingest_all(txn, [job.batch for job in jobs], utc_timestamp(),
                                       decide=decide)
        metrics.committed(results, sum(len(job.batch.entries) for job in jobs), started)
        return results

    async def _isolate(self, jobs: list[_Job], failure: Exception, tries: list[int]
                       ) -> list[IngestResult | Exception]:
        """After a group's transaction failed for a reason other than the database
        being unavailable (something in one batch's content), commit each batch alone,
        so the other links' batches are not failed with it; a batch that fails even
        alone is stored with each new entry rejected as ``undecidable``
        (``ingest_all(decide=False)``), and only if that fails too is its link told of
        an internal error."""
        if self.storage.retryable(failure) or isinstance(failure, OSError) \
                or storage_fault(failure) is not None:
            return [failure] * len(jobs)  # the database or the disk, not a batch's content
        outcomes: list[IngestResult | Exception] = []
        for job in jobs:
            tries[0] = 1  # so that a batch found stored already wakes the pumps
            outcome: IngestResult | Exception = failure
            for decide in (True, False) if len(jobs) > 1 else (False,):
                try:
                    outcome = (await with_retries(
                        self.storage, "ingest of 1 batch",
                        partial(self._commit, [job], tries, decide)))[0]
                    break
                except Exception as exc:
                    log.exception("ingest of a batch of store %s failed%s", job.batch.store,
                                  "" if decide else ", even undecided")
                    outcome = exc
                    if isinstance(exc, OSError) or self.storage.retryable(exc) \
                            or storage_fault(exc) is not None:
                        break  # not the batch's content: its entries are not refused
            outcomes.append(outcome)
        return outcomes

    async def _doc(self, link: RelayLink, hub: StoreHub, sync: am.SyncState,
                   data: bytes) -> None:
        """Merge a device's document sync message and store what it brought; the reply
        is the pump's to generate."""
        roles = {d.device_id: d.role for d in await self.storage.devices(hub.store)}
        async with hub.lock:
            try:
                # Checked on a copy first: a refused message changes nothing here and so
                # reaches no other device.
                problems = forbidden_changes(hub.doc, data, roles.get)
                if problems:
                    log.warning("device %s of store %s: document changes refused: %s",
                                link.device, hub.store, "; ".join(problems))
                    link.fail("forbidden", refusal(problems), fatal=False)
                    return
                chunks = hub.doc.receive_sync(sync, data)
            except InvalidInput as exc:
                link.fail("bad_document", str(exc), fatal=False)
                return
            await with_retries(self.storage, "storing document changes",
                               lambda: self.hubs.persist(hub, chunks))
        if chunks:
            hub.document_changed()

    async def _pump(self, ws: ServerConnection, link: RelayLink, hub: StoreHub,
                    state: dict[str, Any], sending: asyncio.Lock, wake: Wake,
                    after: int) -> None:
        """Push receipts after ``after`` and the document sync messages, each time the
        hub or the handler wakes it.  The only generator of this connection's document
        messages: two generators sharing one SyncState could leave the exchange running
        on without converging (tests/sim/README.md, "What it found")."""
        while True:
            await wake.wait()
            wake.clear()
            while True:
                ready = hub.frame_after(after)
                if ready is not None:  # up to date: the shared, already encoded frame
                    after, frame = ready
                    await self._flush(ws, link, sending, frame)
                    continue
                receipts = await self.storage.receipts_after(hub.store, after, RECEIPTS_PER_FRAME)
                if not receipts:
                    break
                after = receipts[-1]["server_seq"]
                link.send_receipts(receipts, await self.storage.stream_position(hub.store))
                await self._flush(ws, link, sending)
            message = None if state.get("doc_after_device") \
                else hub.doc.sync_message(state["sync"])
            if message is not None:
                link.send_doc(message)
                await self._flush(ws, link, sending)


@asynccontextmanager
async def running(config: RelayConfig) -> AsyncIterator[tuple[Relay, int]]:
    """Start a relay; yields it and the port it listens on (0 picks a free one)."""
    tls = server_context(config.tls_cert, config.tls_key) \
        if config.tls_cert and config.tls_key else None
    relay = await Relay.open(config.data, config.db, db_wait=config.db_wait)
    if dropped := await asyncio.to_thread(sweep_partials, config.data):
        log.info("dropped %d partial files of files held whole", len(dropped))
    relay.cert_validity = round(config.cert_days * 86400)
    relay.gate = Gate(config.limits)
    relay.files = config.files
    relay.prepare_worker_min = config.prepare_worker_min
    try:
        async with serve(relay.handle, config.host, config.port, max_size=TRANSPORT_MAX,
                         open_timeout=config.limits.handshake_timeout, compression=None,
                         reuse_port=config.reuse_port or None,
                         ssl=tls,
                         process_request=api_handler(relay.storage, config.data)) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            try:
                yield relay, port
            finally:
                await stop_serving(server, relay.batches, relay.closing, config.deadlines)
    finally:
        await close_bounded(relay.close, config.deadlines)

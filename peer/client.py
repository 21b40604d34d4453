"""The device's link to the relay: enrollment, one sync round, and the daemon loop.

A thin asyncio layer around ``peer.sync.ClientLink``: it opens a websocket, feeds frames
to the link and acts on its events, using the ``Till`` for everything stored.  One round
(``sync_once``) authenticates, merges the master document both ways, pushes every entry
the relay lacks (its heads say which) in ordered batches, and takes the receipts after
this device's stream position, checking the relay's chain and signature before storing
them.  ``run`` repeats rounds forever, with exponential backoff and jitter on failure.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import automerge.core as am
import websockets
from websockets.asyncio.client import ClientConnection

from tillsync.peer.cert import Certificate, CertificateError
from tillsync.peer.chainstop import describe, stopped_at
from tillsync.peer.errors import InvalidInput, TillsyncError
from tillsync.peer.filelink import FileLink
from tillsync.peer.files import TillFiles
from tillsync.peer.identity import DeviceKey
from tillsync.peer.shutdown import Deadlines
from tillsync.peer.store import Till, utc_timestamp
from tillsync.peer.sync.engine import (
    ClientLink,
    DocMessage,
    DocSnapshot,
    Enrolled,
    Ingested,
    LinkFailed,
    Ready,
    ReceiptsReceived,
    RemoteError,
)
from tillsync.peer.sync.frames import TRANSPORT_MAX
from tillsync.peer.sync.receipts import RELAY_BEHIND, relay_behind, verify_receipts
from tillsync.peer.tls import normalise_pin, relay_connection

log = logging.getLogger("tillsync.peer")
BATCH = 500
# Entries frames sent before the first is answered: the relay prepares the next batch
# while the last one is being committed (tools.bench_relay on the 2-core VM, one run each:
# 8,662 sales/s with one in flight, 10,796 with two, 10,766 with four; three interleaved
# runs of the relay without and with its window: +7% on average).
PUSH_WINDOW = 2
DOC_WAIT = 2.0  # seconds to wait for the document exchange before pushing anyway
CLOSE_TIMEOUT = Deadlines().close  # seconds for the relay to answer our closing frame
# The longest wait between two attempts to reach the relay.  After an outage a till is
# back within this many seconds of the relay; the full jitter below keeps a relay that
# serves thousands of tills from getting all of them at once (on average one every
# RELAY_MAX_BACKOFF / 2 seconds from each till while it is down).
RELAY_MAX_BACKOFF = 10.0


class SyncError(TillsyncError):
    """A sync round could not complete (relay unreachable, refused, or misbehaving)."""

    def __init__(self, message: str, code: str = "unreachable") -> None:
        super().__init__(message)
        self.code = code


@dataclass
class SyncReport:
    pushed: int = 0
    receipts: int = 0
    accepted: int = 0
    rejected: int = 0
    waiting: int = 0
    doc_changes: int = 0
    pending: int = 0
    errors: list[str] = field(default_factory=list)
    stopped: dict[str, Any] | None = None  # see peer.chainstop
    files: int = 0  # files the relay confirmed holding this round (peer.files)


async def enroll(url: str, code: str, name: str, key: DeviceKey, device_id: str,
                 within: float = 10.0, *, tls_pin: str | None = None,
                 tls_ca: str | None = None) -> Enrolled:
    """Register a new device at the relay with a one-time code (over ``wss://``, the
    relay's TLS certificate checked as ``peer.tls`` says)."""
    link = ClientLink(store="", device=device_id, key=key, nonce=os.urandom(32))
    link.start_enroll(code, name)
    try:
        async with asyncio.timeout(within):
            async with relay_connection(url, pin=tls_pin, ca=tls_ca, max_size=TRANSPORT_MAX,
                                        compression=None) as ws:
                for out in link.data_to_send():
                    await ws.send(out)
                async for frame in ws:
                    link.receive_data(frame)
                    for event in link.events_received():
                        if isinstance(event, Enrolled):
                            return event
                        if isinstance(event, RemoteError | LinkFailed):
                            raise SyncError(f"enrollment refused: {event.message}", event.code)
    except (OSError, TimeoutError, websockets.WebSocketException) as exc:
        raise SyncError(f"cannot reach the relay at {url}: {exc or type(exc).__name__}") \
            from None
    raise SyncError("the relay closed the connection during enrollment")


async def enroll_checked(url: str, code: str, name: str, key: DeviceKey, device_id: str,
                         *, tls_pin: str | None = None, tls_ca: str | None = None
                         ) -> Enrolled:
    """``enroll``, and check that the certificate the relay issued is for this very
    device and key, signed by the key the relay says signs for the store."""
    enrolled = await enroll(url, code, name, key, device_id, tls_pin=tls_pin, tls_ca=tls_ca)
    try:
        cert = Certificate.load(enrolled.cert, enrolled.relay_key, store=enrolled.store)
    except CertificateError as exc:
        raise SyncError(f"the relay's certificate for this device is unusable: {exc}",
                        "bad_certificate") from None
    if (cert.device, cert.public_key) != (device_id, key.public_bytes):
        raise SyncError("the relay certified another device or key than this one",
                        "bad_certificate")
    return enrolled


async def init_enrolled(path: Path, *, name: str, url: str, code: str,
                        series: str | None = None, tls_pin: str | None = None,
                        tls_ca: str | None = None) -> dict[str, str]:
    """``peer init --relay URL --code CODE``: enroll first, then create the store, so a
    refused code leaves nothing behind."""
    Till.check_new(path, name, series)
    if tls_pin:
        tls_pin = normalise_pin(tls_pin)
    key, device_id = DeviceKey.generate(), str(uuid.uuid4())
    enrolled = await enroll_checked(url, code, name, key, device_id, tls_pin=tls_pin,
                                    tls_ca=tls_ca)
    return await Till.init(path, name=name, series=series, store_id=enrolled.store, key=key,
                           device_id=device_id, relay_url=url, relay_key=enrolled.relay_key,
                           cert=enrolled.cert, tls_pin=tls_pin, tls_ca=tls_ca)


async def sync_once(till: Till, url: str | None = None, *, within: float = 30.0,
                    settle: float = 0.2) -> SyncReport:
    """One full round with the relay; raises ``SyncError`` if it cannot complete."""
    url = url or till.meta.get("relay_url")
    if not url:
        raise InvalidInput("this store has no relay; enroll it (`peer init --relay URL "
                           "--code CODE`) or pass --relay")
    report = SyncReport()
    try:
        async with asyncio.timeout(within):
            async with relay_connection(url, pin=till.meta.get("relay_tls_pin") or None,
                                        ca=till.meta.get("relay_tls_ca") or None,
                                        max_size=TRANSPORT_MAX, compression=None,
                                        open_timeout=min(within, 10),
                                        close_timeout=CLOSE_TIMEOUT) as ws:
                try:
                    await _round(till, ws, report, settle)
                except asyncio.CancelledError:  # the daemon is stopping: tell the relay
                    await ws.close(1001, "till shutting down")
                    raise
    except (OSError, TimeoutError, websockets.WebSocketException) as exc:
        error = f"cannot sync with the relay at {url}: {exc or type(exc).__name__}"
        await till.note_contact("", error)
        raise SyncError(error) from None
    except SyncError as exc:
        await till.note_contact("", str(exc))
        raise
    # A completed round; clears the last error, or notes what the relay refused in it.
    await till.note_contact(utc_timestamp(), "; ".join(report.errors))
    report.pending = (await till.pending(limit=0))[0]
    report.stopped = await stopped_at(till)
    if report.stopped is not None:
        log.error("%s", describe(report.stopped))
    return report


async def _round(till: Till, ws: ClientConnection,
                 report: SyncReport, settle: float) -> None:
    seq, head = till.receipts_position()
    # A till with an empty document gets the relay's as a snapshot right after welcome
    # (if the relay holds more): its first sync message waits for it, so the relay
    # learns the till holds the snapshot and sends no change of it again.
    awaiting_snapshot = till.master.is_genesis()
    link = ClientLink(store=till.store_id, device=till.device_id, key=till.key,
                      nonce=os.urandom(32), relay_key=till.relay_key, receipts_after=seq,
                      doc_empty=awaiting_snapshot)
    sync = am.SyncState()
    link.start()
    heads: dict[str, int] = {}
    unvouched: list[dict[str, object]] = []  # received, not yet covered by a signature
    in_flight = 0
    pushed_all = False
    pushing = False
    doc_refused = False  # the relay refused this till's document changes this round
    relay_head = -1
    store = TillFiles(till.path)

    async def file_held(sha256: str) -> None:
        await asyncio.to_thread(store.mark_at_relay, sha256)
        report.files += 1

    async def file_refused(sha256: str, code: str, message: str) -> None:
        log.warning("the relay refused the file %s: %s (%s)", sha256, message, code)
        report.errors.append(f"file {sha256}: {code}: {message}")

    files = FileLink(link, store, held=file_held, refused=file_refused)
    files_offered = False

    async def offer_files() -> None:
        """Files go after the log: once every entry is pushed and answered."""
        nonlocal files_offered
        if pushed_all and in_flight == 0 and not files_offered:
            files_offered = True
            named = await till.file_names()  # an upload no entry names stays here
            files.offer(r for r in await asyncio.to_thread(store.not_at_relay)
                        if r.sha256 in named)

    async def flush() -> None:
        for frame in link.data_to_send():
            await ws.send(frame)

    async def push_next() -> None:
        nonlocal in_flight, pushed_all, pushing
        pushing = True
        batch = await till.entries_after(heads, BATCH)
        if not batch:
            pushed_all = True
            return
        for entry in batch:
            heads[entry.device_id] = max(heads.get(entry.device_id, 0), entry.seq)
        link.send_entries(batch)
        report.pushed += len(batch)
        in_flight += 1

    async def push_more() -> None:
        while not pushed_all and in_flight < PUSH_WINDOW:
            await push_next()

    async def doc_settled() -> None:
        """Entries go up only once the relay holds this till's document: a sale of a
        product made offline must not reach the relay before the product does.  Our
        side has nothing to send exactly when the relay's last sync message showed it
        has all our changes."""
        message = None if doc_refused else till.master.sync_message(sync)
        if message is not None:
            link.send_doc(message)
        elif not pushing:
            await push_more()

    await flush()
    while True:
        done = pushed_all and in_flight == 0 and seq >= relay_head and files_offered \
            and not files.busy
        wait = settle if done else (DOC_WAIT if not pushing and relay_head >= 0 else None)
        try:
            async with asyncio.timeout(wait):  # not wait_for: it can eat a cancellation
                frame = await ws.recv()
        except TimeoutError:
            if done:
                return  # everything pushed and answered, and the relay has gone quiet
            await push_more()  # the document exchange stalled: push all the same
            await offer_files()
            await flush()
            continue
        link.receive_data(frame)
        for event in link.events_received():
            if isinstance(event, Ready):
                if event.receipts_head < seq:  # before anything is pushed to that relay
                    raise SyncError(relay_behind(seq, event.receipts_head), RELAY_BEHIND)
                # Revocations first: a revoked device's later entries must not go up.
                for trouble in await till.add_revocations(event.revoked):
                    log.warning("a revocation from the relay: %s", trouble)
                if event.cert != till.cert:
                    for trouble in await till.add_certs([event.cert]):
                        log.warning("the relay's certificate for this till: %s", trouble)
                heads = dict(event.heads)
                relay_head = event.receipts_head
                if not awaiting_snapshot:
                    await doc_settled()
            elif isinstance(event, Ingested):
                in_flight -= 1
                relay_head = max(relay_head, event.receipts_head)
                await push_more()
            elif isinstance(event, ReceiptsReceived):
                # The relay signs the last receipt of each of its batches; a frame may end
                # inside a batch, so what is not yet vouched for waits for the next frame.
                run = unvouched + event.receipts
                good_seq, good_head, problem = verify_receipts(
                    till.relay_key or b"", run, seq, head)
                if problem is not None:
                    raise SyncError(f"receipts from the relay do not verify: {problem}",
                                    "bad_receipts")
                vouched = [r for r in run if r["server_seq"] <= good_seq]
                unvouched = [r for r in run if r["server_seq"] > good_seq]
                if vouched:
                    await till.store_receipts(vouched, good_seq, good_head, utc_timestamp())
                    seq, head = good_seq, good_head
                    report.receipts += len(vouched)
                    for r in vouched:
                        if r["device_id"] == till.device_id:
                            setattr(report, r["status"], getattr(report, r["status"]) + 1)
                relay_head = max(relay_head, event.head)
            elif isinstance(event, DocSnapshot):
                await till.receive_document(sync, snapshot=event.data)
                report.doc_changes += 1
                if awaiting_snapshot:
                    awaiting_snapshot = False
                    await doc_settled()
            elif isinstance(event, DocMessage):
                awaiting_snapshot = False  # the relay had no snapshot to send
                await till.receive_document(sync, message=event.data)
                report.doc_changes += 1
                await doc_settled()
            elif await files.handle(event):
                pass
            elif isinstance(event, RemoteError) and event.code == "forbidden" \
                    and not event.fatal:
                # Master-data changes this device may not make (its role): they stay
                # here, unsynced; the round goes on, so sales still go up.
                log.warning("the relay refused document changes: %s", event.message)
                report.errors.append(f"{event.code}: {event.message}")
                doc_refused = True  # offering them again this round would loop
                await doc_settled()
            elif isinstance(event, RemoteError | LinkFailed):
                raise SyncError(f"the relay refused: {event.message}", event.code)
        await offer_files()
        await flush()
        if link.closed:
            raise SyncError("the relay closed the link")


def retry_delay(failures: int, interval: float,
                max_backoff: float = RELAY_MAX_BACKOFF) -> float:
    """Seconds to wait after ``failures`` failed rounds in a row: exponential backoff
    from ``interval``, capped at ``max_backoff``, with full jitter."""
    return random.uniform(0, min(max_backoff, interval * 2 ** min(failures, 32)))


async def run(path: Path, *, url: str | None = None, interval: float = 5.0,
              max_backoff: float = RELAY_MAX_BACKOFF, rounds: int | None = None) -> None:
    """The daemon: sync every ``interval`` seconds; on failure back off exponentially
    (with full jitter, so a shop's tills do not all retry at once) up to ``max_backoff``.

    The store is opened for each round and closed after it, so other processes (the
    till's front end, the CLI) can write between rounds."""
    failures = 0
    done = 0
    while rounds is None or done < rounds:
        try:
            async with await Till.open(path, wait=10.0) as till:
                report = await sync_once(till, url)
            failures = 0
            log.info("synced: pushed %d, %d receipts, %d pending", report.pushed,
                     report.receipts, report.pending)
            delay = interval
        except SyncError as exc:
            failures += 1
            delay = retry_delay(failures, interval, max_backoff)
            log.warning("sync failed (%s); retrying in %.1f s", exc, delay)
        done += 1
        if rounds is None or done < rounds:
            await asyncio.sleep(delay)

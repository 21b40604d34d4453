"""One authenticated link between two tills, as an asyncio task around ``PeerLink``.

Both ends run the same session once the handshake is done: state what this till holds
(``have``), then keep pushing what the other lacks whenever the store changes: the
master document (Automerge sync), certificates, every device's log entries (one batch
in flight, acknowledged by ``ingested``) and the relay's receipts (by stream position).
What comes in is checked before it is stored: entries by chain and signature
(``Till.receive_entries``), receipts by the relay's chain and signature, certificates
by the relay's key.  A peer that forwards a forged entry is cut off; nothing of its
batch is stored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import automerge.core as am
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK

from tillsync.peer.errors import EntryRefused
from tillsync.peer.filelink import FileLink
from tillsync.peer.files import TillFiles
from tillsync.peer.lan.docsync import DocSync, Mesh
from tillsync.peer.master.roles import forbidden_changes, refusal
from tillsync.peer.shutdown import Deadlines, cancel_and_wait
from tillsync.peer.store import Till
from tillsync.peer.sync.engine import (
    CertsReceived,
    DocMessage,
    EntriesReceived,
    HaveReceived,
    Ingested,
    LinkFailed,
    LinksReceived,
    PeerAuthenticated,
    PeerLink,
    ReceiptsReceived,
    RemoteError,
    RevokedReceived,
)
from tillsync.peer.sync.receipts import verify_receipts

log = logging.getLogger("tillsync.lan")
BATCH = 500
FILES_RESCAN = 1.0  # seconds between two looks for new files to offer a peer


class Socket(Protocol):
    async def send(self, message: bytes) -> None: ...
    async def recv(self) -> bytes | str: ...


@dataclass
class PeerInfo:
    """What this till knows of one LAN peer, for ``peer status``."""

    device_id: str
    name: str
    address: str
    connected: bool = False
    since: float = 0.0
    last_frame: float = 0.0
    heads: dict[str, int] = field(default_factory=dict)
    receipts_head: int = 0
    entries_in: int = 0
    entries_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    last_error: str = ""


# Refusals that another try will meet again: the dialer waits long before the next.
LASTING_REFUSALS = frozenset({"wrong_store", "bad_certificate", "revoked", "self", "version"})


class PeerSession:
    """Drives one ``PeerLink`` over one socket until either end closes it."""

    def __init__(self, till: Till, link: PeerLink, ws: Socket, address: str,
                 peers: dict[str, PeerInfo], mesh: Mesh | None = None) -> None:
        self.till, self.link, self.ws, self.address = till, link, ws, address
        self._peers = peers
        # Who is linked with whom, shared by the node's links (see peer.lan.docsync).
        self._mesh = mesh if mesh is not None else Mesh()
        self._up: str | None = None  # the peer's device, while this link counts as up
        self.info: PeerInfo | None = None
        # Why the link was refused for good (another store, a certificate that will not
        # do, a revoked device), if it was: no point dialling again soon.
        self.refused: str | None = None
        self.authenticated = asyncio.Event()  # set once the handshake has completed
        self._sync = am.SyncState()
        self._send_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._peer_heads: dict[str, int] | None = None
        self._peer_receipts = 0
        self._in_flight = False
        self._certs_sent: set[str] = set()
        self._revoked_sent: set[bytes] = set()
        self._unvouched: list[dict[str, Any]] = []
        # Files both ways: each end offers every named file it holds, after its entries.
        self._files = FileLink(link, TillFiles(till.path), received=self._file_in)
        self._files_scanned = -FILES_RESCAN
        self._rescan_due = False
        self._doc: DocSync | None = None  # once the peer is known (peer.lan.docsync)
        self._doc_timer: asyncio.TimerHandle | None = None

    async def run(self) -> None:
        """Handshake and sync until the link closes; raises nothing but CancelledError."""
        tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._push()),
                 asyncio.create_task(self._watch())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                exc = task.exception()
                if exc is None or isinstance(exc, ConnectionClosedOK):
                    continue
                if isinstance(exc, ConnectionError | ConnectionClosed):
                    self._note_error(f"connection lost: {exc}")
                    log.info("LAN link %s lost: %s", self.address, exc)
                else:
                    self._note_error(f"{type(exc).__name__}: {exc}")
                    log.warning("LAN link %s: %s", self.address, exc)
        finally:
            if self._up is not None:
                self._mesh.unlisten(self._wake.set)
                self._mesh.down(self._up)
                self._up = None
            # Not `with suppress(BaseException): await task`: that ate the cancellation
            # of the task running this session, so a daemon told to stop while a link
            # was ending went on redialling forever.
            await cancel_and_wait(tasks, Deadlines().cancel, f"tasks of LAN link {self.address}")
            if self.info is not None:
                self.info.connected = False

    def _note_error(self, message: str) -> None:
        if self.info is not None:
            self.info.last_error = message

    async def flush(self) -> None:
        async with self._send_lock:
            for frame in self.link.data_to_send():
                await self.ws.send(frame)
                if self.info is not None:
                    self.info.bytes_out += len(frame)

    async def _read(self) -> None:
        while not self.link.closed:
            frame = await self.ws.recv()
            self.link.receive_data(frame)
            if self.info is not None:
                self.info.last_frame = time.time()
                self.info.bytes_in += len(frame)
            for event in self.link.events_received():
                await self._on(event)
            await self.flush()

    async def _on(self, event: object) -> None:
        till, link = self.till, self.link
        if isinstance(event, PeerAuthenticated):
            cert = event.cert
            for problem in await till.add_certs([cert.raw]):
                log.warning("LAN peer %s: %s", self.address, problem)
            previous = self._peers.get(cert.device)
            self.info = PeerInfo(cert.device, cert.name, self.address, connected=True,
                                 since=time.time(), last_frame=time.time())
            if previous is not None and previous.connected:
                # A second link to the same till (both dialled at once): keep both
                # counted under the newest; either alone carries everything.
                self.info.entries_in, self.info.entries_out = \
                    previous.entries_in, previous.entries_out
            self._peers[cert.device] = self.info
            self._doc = DocSync(till.master, first=till.device_id < cert.device,
                                mesh=self._mesh, peer=cert.device)
            self._up = cert.device
            self._mesh.listen(self._wake.set)
            self._mesh.up(cert.device)
            self.authenticated.set()
            log.info("LAN link with %s (%s) at %s", cert.name, cert.device, self.address)
            link.send_have(till.heads(), till.receipts_position()[0])
            self._wake.set()
        elif isinstance(event, HaveReceived):
            self._peer_heads = dict(event.heads)
            self._peer_receipts = event.receipts_head
            self._note_have(event.heads, event.receipts_head)
            self._wake.set()
        elif isinstance(event, RevokedReceived):
            for problem in await till.add_revocations(event.revoked):
                log.warning("LAN peer %s sent a revocation that is refused: %s",
                            self.address, problem)
            self._revoked_sent.update(event.revoked)  # it has these already
            self._wake.set()  # a link with a device revoked just now is closed by _push
        elif isinstance(event, CertsReceived):
            for problem in await till.add_certs(event.certs):
                log.warning("LAN peer %s sent a certificate that is refused: %s",
                            self.address, problem)
        elif isinstance(event, EntriesReceived):
            try:
                stored = await till.receive_entries(event.entries)
            except EntryRefused as exc:
                log.warning("LAN peer %s: %s; link closed, nothing stored", self.address, exc)
                self._note_error(str(exc))
                link.fail("bad_entry", str(exc))
                return
            if self.info is not None:
                self.info.entries_in += stored
            link.send_ingested(till.heads(), stored, till.receipts_position()[0])
        elif isinstance(event, Ingested):
            self._peer_heads = dict(event.heads)
            self._note_have(event.heads, event.receipts_head)
            self._in_flight = False
            self._wake.set()
        elif isinstance(event, ReceiptsReceived):
            await self._receipts(event.receipts)
        elif isinstance(event, LinksReceived):
            if self.info is not None:
                self._mesh.stated(self.info.device_id, event.devices)
        elif isinstance(event, DocMessage):
            assert self._doc is not None  # a 'doc' comes only on a ready link
            data = self._doc.received(event.data, till.master, edit=event.edit)
            try:
                # The relay's rule, here too: prices and settings only from a back-office
                # or admin device (by the certificates this till holds), so a till-role
                # device's price change does not spread on the LAN either.  A change of
                # a device it holds no certificate of was checked by its forwarder.
                problems = forbidden_changes(till.master, data, till.role_of,
                                             unknown_allowed=True)
                if problems:
                    log.warning("LAN peer %s: document changes refused: %s", self.address,
                                "; ".join(problems))
                    self._note_error(f"forbidden: {problems[0]}")
                    link.fail("forbidden", refusal(problems), fatal=False)
                    return
                await till.receive_document(self._sync, message=data)
            except Exception as exc:  # the Automerge binding raises plain Exception
                log.warning("LAN peer %s: bad document message: %s", self.address, exc)
                link.fail("bad_document", "the document sync message does not apply",
                          fatal=False)
                return
            self._doc.applied()
            self._wake.set()
        elif await self._files.handle(event):
            self._wake.set()
        elif isinstance(event, RemoteError | LinkFailed):
            log.warning("LAN link %s: %s (%s)", self.address, event.message, event.code)
            self._note_error(f"{event.code}: {event.message}")
            if event.code in LASTING_REFUSALS:
                self.refused = f"{event.message} ({event.code})"
            if isinstance(event, RemoteError) and not event.fatal:
                # A refused frame (e.g. too_large) is not answered by 'ingested': do not
                # wait for it; what the peer lacks is sent again from its heads.
                self._in_flight = False
                self._wake.set()

    async def _file_in(self, sha256: str) -> None:
        """A file came whole from the peer: the other links and the relay round offer it."""
        log.info("LAN peer %s sent the file %s", self.address, sha256)
        self.till.touch_files()

    async def _offer_files(self) -> None:
        """Offer the files held that this link has not offered yet; the directory is
        scanned at most every ``FILES_RESCAN`` seconds (a sale wakes this loop too)."""
        now = time.monotonic()
        if now - self._files_scanned < FILES_RESCAN:
            if not self._rescan_due:  # one look later, however many wakes meanwhile
                self._rescan_due = True
                asyncio.get_running_loop().call_later(FILES_RESCAN, self._wake.set)
            return
        self._rescan_due = False
        self._files_scanned = now
        fresh = await asyncio.to_thread(self._files.unoffered)
        if fresh:
            named = await self.till.file_names()  # an upload no entry names stays here
            self._files.offer(r for r in fresh if r.sha256 in named)

    def _note_have(self, heads: dict[str, int], receipts_head: int) -> None:
        if self.info is not None:
            self.info.heads = dict(heads)
            self.info.receipts_head = max(self.info.receipts_head, receipts_head)

    async def _receipts(self, receipts: list[dict[str, Any]]) -> None:
        """Receipts forwarded by the peer: those beyond this till's position must continue
        the relay's chain, vouched for by the relay's signature."""
        seq, head = self.till.receipts_position()
        run = [r for r in self._unvouched + receipts
               if isinstance(r.get("server_seq"), int) and r["server_seq"] > seq]
        if run and run[0]["server_seq"] != seq + 1:
            # The peer thinks we hold more than we do: say where we stand, it resends.
            self._unvouched = []
            self.link.send_have(self.till.heads(), seq)
            return
        good_seq, good_head, problem = verify_receipts(self.till.relay_key or b"", run, seq,
                                                       head)
        if problem is not None:
            log.warning("LAN peer %s: receipts do not verify: %s", self.address, problem)
            self._note_error(f"receipts refused: {problem}")
            self.link.fail("bad_receipts", f"receipts do not verify: {problem}")
            return
        vouched = [r for r in run if r["server_seq"] <= good_seq]
        self._unvouched = [r for r in run if r["server_seq"] > good_seq]
        if vouched:
            await self.till.store_receipts(vouched, good_seq, good_head, "")

    @staticmethod
    def _behind(mine: Mapping[str, int], theirs: Mapping[str, int]) -> bool:
        return any(seq > theirs.get(device, 0) for device, seq in mine.items())

    async def _document(self) -> bool:
        """Queue what the link owes its peer of the document; whether anything was."""
        if self._doc is None:
            return False
        devices = self._doc.links_due()
        if devices is not None:
            self.link.send_links(devices)
        message, wake_at = self._doc.outgoing(self.till.master, self._sync, time.monotonic())
        if wake_at is not None and self._doc_timer is None:
            self._doc_timer = asyncio.get_running_loop().call_later(
                max(0.0, wake_at - time.monotonic()), self._doc_due)
        if message is None:
            return devices is not None
        if self._doc.edit:
            self.link.send_edit(message)
        else:
            self.link.send_doc(message)
        return True

    def _doc_due(self) -> None:
        self._doc_timer = None
        self._wake.set()

    async def _watch(self) -> None:
        seen = self.till.version
        while True:
            seen = await self.till.wait_changed(seen)
            self._wake.set()

    async def _push(self) -> None:
        till, link = self.till, self.link
        while not link.closed:
            await self._wake.wait()
            self._wake.clear()
            if link.state != "ready" or self._peer_heads is None:
                continue
            if self.info is not None and till.revoked_upto(self.info.device_id) is not None:
                log.warning("LAN peer %s (%s) has been revoked: link closed", self.address,
                            self.info.device_id)
                self._note_error("revoked")
                link.fail("revoked", "this device has been revoked by the relay")
                await self.flush()
                return
            revocations = [r for r in till.revocations() if r not in self._revoked_sent]
            if revocations:  # before any entries, so the peer filters them already
                link.send_revoked(revocations)
                self._revoked_sent.update(revocations)
            if await self._document():
                await self.flush()  # a price change goes out before any database work
            if not self._in_flight and self._behind(till.committed.heads, self._peer_heads):
                batch = await till.entries_after(self._peer_heads, BATCH)
                if batch:
                    certs = till.certs()
                    new = sorted({e.device_id for e in batch} - self._certs_sent)
                    if new:
                        link.send_certs([certs[d] for d in new if d in certs])
                        self._certs_sent.update(new)
                    link.send_entries(batch)
                    self._in_flight = True
                    if self.info is not None:
                        self.info.entries_out += len(batch)
            if not self._in_flight:  # files after the entries, a window at a time
                await self._offer_files()
                await self._files.pump()
            position = till.receipts_position()[0]
            if self._peer_receipts < position:
                receipts = await till.stream_after(self._peer_receipts, BATCH)
                if receipts:
                    link.send_receipts(receipts, position)
                    self._peer_receipts = receipts[-1]["server_seq"]
                    if self._peer_receipts < position:
                        self._wake.set()
            await self.flush()

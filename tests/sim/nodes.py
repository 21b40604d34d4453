"""Tills and a relay as simulation nodes: the real engines and stores, no sockets, no clock.

``TillNode`` runs the real ``Till`` (its SQLite file, its writer) and drives the real
``ClientLink``; ``ClientSession`` is one sync round, a faithful event-driven copy of
``peer.client._round`` (same pushing, document settling, receipt verification and
timeouts, but timeouts on the simulated clock).  ``RelayNode`` runs the real
``SQLiteStorage``, ``Hubs`` and ``relay.ingest.ingest`` and drives the real
``RelayLink``; its handlers copy what ``relay.server.Relay`` does between link events and
storage (``handle``, ``_ingest``, ``_write_loop`` with group commit, ``_doc``, ``_pump``).

A crash copies the node's files as they are on disk at that instant (database, WAL,
shared-memory index, key), which is what a ``kill -9`` leaves behind, drops everything
the node held in memory, and a restart opens the copy.
"""

from __future__ import annotations

import shutil
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import automerge.core as am

from tests.sim.network import Conn, Scheduler, Timer
from tillsync.peer.cert import Certificate
from tillsync.peer.client import BATCH, DOC_WAIT, PUSH_WINDOW, SyncError
from tillsync.peer.errors import EntryRefused, InvalidInput
from tillsync.peer.identity import DeviceKey
from tillsync.peer.lan.docsync import DocSync, Mesh
from tillsync.peer.lan.session import BATCH as LAN_BATCH
from tillsync.peer.log import Entry
from tillsync.peer.store import Till
from tillsync.peer.sync.engine import (
    Authenticated,
    CertsReceived,
    ClientLink,
    DocMessage,
    DocSnapshot,
    EnrollRequested,
    EntriesReceived,
    Event,
    HaveReceived,
    HelloReceived,
    Ingested,
    LinkFailed,
    LinksReceived,
    PeerAuthenticated,
    PeerLink,
    Ready,
    ReceiptsReceived,
    RelayLink,
    RemoteError,
    RevokedReceived,
)
from tillsync.peer.sync.receipts import verify_receipts
from tillsync.relay.documents import Hubs, StoreHub
from tillsync.relay.ingest import Batch, IngestResult, ingest_all
from tillsync.relay.prepare import Checked, prepare
from tillsync.relay.server import INGEST_WINDOW, MAX_JOBS_PER_COMMIT, RECEIPTS_PER_FRAME
from tillsync.relay.storage import SQLiteStorage

if TYPE_CHECKING:
    from tests.sim.world import World


class InjectedFault(Exception):
    """A fault the simulation caused on purpose (a failed commit): expected, not a bug."""


class Violation(AssertionError):
    """An invariant of the system does not hold."""


def copy_disk(src: Path, dst: Path, names: tuple[str, ...]) -> None:
    """What a kill -9 leaves: the files as they are now, byte for byte."""
    dst.mkdir(mode=0o700, parents=True)
    for name in names:
        for suffix in ("", "-wal", "-shm"):
            path = src / (name + suffix)
            if path.exists():
                shutil.copy2(path, dst / path.name)


# -- a till ---------------------------------------------------------------------------


class TillNode:
    INTERVAL = 5.0  # peer.client.run's default
    MAX_BACKOFF = 60.0
    WITHIN = 30.0  # sync_once's time limit for a round
    SETTLE = 0.2

    def __init__(self, world: World, name: str, root: Path, relay: str) -> None:
        self.world = world
        self.name = name
        self.root = root
        self.relay = relay
        self.gen = 0
        self.till: Till | None = None
        self.session: ClientSession | None = None
        self.failures = 0
        self._next: Timer | None = None
        self.lan: dict[int, LanSession] = {}  # LAN links, by connection id
        self.mesh = Mesh()  # who is linked with whom, as peer.lan.node keeps it
        self.dialing: set[str] = set()  # tills this one is dialling on the LAN
        self._lan_next: Timer | None = None

    @property
    def dir(self) -> Path:
        return self.root / f"gen{self.gen}"

    @property
    def up(self) -> bool:
        return self.till is not None

    def connections(self) -> list[Conn]:
        conns = [lan.conn for lan in self.lan.values()]
        if self.session is not None and self.session.conn is not None:
            return [self.session.conn, *conns]
        return conns

    async def start(self) -> None:
        self.till = await Till.open(self.dir, clock=self.world.sched.datetime)
        self.failures = 0
        self._schedule(self.world.rng.uniform(0, 1.0))
        if self.world.lan:
            self._lan_next = self.world.sched.after(self.world.rng.uniform(0, 1.0),
                                                    self._lan_tick)

    # -- the LAN: peer.lan.node dials the other tills and keeps one link to each ----------

    LAN_TICK = 0.5  # how often a link looks for what its peer lacks (PeerSession wakes on
    # every change of the store; the simulation looks this often, and after every frame)

    async def _lan_tick(self) -> None:
        till = self.till
        if till is None:
            return
        self._lan_next = self.world.sched.after(self.LAN_TICK, self._lan_tick)
        net = self.world.net
        for lan in list(self.lan.values()):
            if lan.conn.id not in self.lan:
                continue
            if (not net.reachable(self.name, lan.peer)
                    and self.world.sched.now - lan.last_frame > 2 * RelayNode.KEEPALIVE):
                self.close_lan(lan)  # no pong: websockets closes the connection
            else:
                await lan.push()
        if till.cert is None or self.dialing:
            return
        linked = {lan.peer for lan in self.lan.values()}
        for other in self.world.tills:
            # the lower-named till dials, so two tills keep one link between them
            if other.name > self.name and other.name not in linked:
                self.dialing.add(other.name)
                await net.connect(self.name, other.name,
                                  partial(self._lan_connected, other.name, self.gen))

    async def _lan_connected(self, peer: str, gen: int, conn: Conn | None) -> None:
        self.dialing.discard(peer)
        if conn is None:
            return
        if self.till is None or gen != self.gen:
            self.world.net.close(conn, self.name)
            return
        lan = LanSession(self, self.till, conn, peer, dialer=True)
        self.lan[conn.id] = lan
        lan.start()

    def close_lan(self, lan: LanSession) -> None:
        if self.lan.pop(lan.conn.id, None) is lan and lan.device is not None:
            self.mesh.down(lan.device)
        self.world.net.close(lan.conn, self.name)

    async def crash(self) -> None:
        """kill -9: the files stay as they are; memory, timers and sockets are gone."""
        assert self.till is not None
        copy_disk(self.dir, self.root / f"gen{self.gen + 1}", ("till.db", "device.key"))
        self.world.net.drop_node(self.name)
        till, self.till = self.till, None
        self.session = None
        self.lan.clear()
        self.mesh = Mesh()
        self.dialing = set()
        for timer in (self._next, self._lan_next):
            if timer is not None:
                timer.cancel()
        await till.close()  # the copy is what restarts; this only frees the old handles
        shutil.rmtree(self.dir)
        self.gen += 1

    def _schedule(self, delay: float) -> None:
        if self._next is not None:
            self._next.cancel()
        self._next = self.world.sched.after(delay, self._start_round)

    async def _start_round(self) -> None:
        if self.till is None or self.session is not None:
            return
        self.session = ClientSession(self, self.till)
        await self.session.begin()

    async def round_over(self, session: ClientSession, error: str | None) -> None:
        """What ``sync_once`` and ``run`` do after a round."""
        if self.session is not session or self.till is None:
            return
        self.session = None
        if session.conn is not None:
            self.world.net.close(session.conn, self.name)
        session.stop_timers()
        self.world.stats["rounds_ok" if error is None else "rounds_failed"] += 1
        self.world.note_doc_messages(session.doc_messages)
        if error is None:
            await self.till.note_contact(self.world.sched.timestamp())
            self.failures = 0
            self._schedule(self.INTERVAL)
        else:
            await self.till.note_contact("", error)
            self.failures += 1
            self._schedule(self.world.rng.uniform(
                0, min(self.MAX_BACKOFF, self.INTERVAL * 2 ** self.failures)))

    # network callbacks

    async def on_accept(self, conn: Conn) -> bool:
        """The LAN server: a till with its certificate accepts another till's link."""
        till = self.till
        if not self.world.lan or till is None or till.cert is None:
            return False
        self.lan[conn.id] = LanSession(self, till, conn, conn.client, dialer=False)
        return True

    async def on_frame(self, conn: Conn, data: bytes) -> None:
        if self.session is not None and self.session.conn is conn:
            await self.session.on_frame(data)
        elif conn.id in self.lan:
            await self.lan[conn.id].on_frame(data)

    async def on_close(self, conn: Conn) -> None:
        if self.session is not None and self.session.conn is conn:
            await self.round_over(self.session, "the relay closed the connection")
        elif conn.id in self.lan:
            self.close_lan(self.lan[conn.id])


class ClientSession:
    """One sync round, as ``peer.client._round`` runs it, driven by network events."""

    DOC_MESSAGES_MAX = 200

    def __init__(self, node: TillNode, till: Till) -> None:
        self.node, self.till = node, till
        self.doc_messages = 0
        self.sched: Scheduler = node.world.sched
        self.conn: Conn | None = None
        self.link: ClientLink | None = None
        self.sync = am.SyncState()
        self.awaiting_snapshot = False  # set when the round starts, as peer.client does
        self.heads: dict[str, int] = {}
        self.unvouched: list[dict[str, Any]] = []
        self.in_flight = 0
        self.pushed_all = False
        self.pushing = False
        self.relay_head = -1
        self.seq, self.head = till.receipts_position()
        # peer.client pushes BATCH entries a frame; smaller batches now and then, so that
        # several are in flight and answered one by one
        self.batch = node.world.rng.choice((1, 3, BATCH))
        self._wait: Timer | None = None
        self._deadline: Timer | None = None

    async def begin(self) -> None:
        self._deadline = self.sched.after(self.node.WITHIN, self._timed_out)
        await self.node.world.net.connect(self.node.name, self.node.relay, self._connected)

    async def _timed_out(self) -> None:
        await self.node.round_over(self, "timed out")

    def stop_timers(self) -> None:
        for timer in (self._wait, self._deadline):
            if timer is not None:
                timer.cancel()

    async def _connected(self, conn: Conn | None) -> None:
        if self.node.session is not self:
            if conn is not None:
                self.node.world.net.close(conn, self.node.name)
            return
        if conn is None:
            await self.node.round_over(self, "cannot reach the relay")
            return
        self.conn = conn
        till = self.till
        self.awaiting_snapshot = till.master.is_genesis()
        self.link = ClientLink(store=till.store_id, device=till.device_id, key=till.key,
                               nonce=self.node.world.rng.randbytes(32),
                               relay_key=till.relay_key, receipts_after=self.seq,
                               doc_empty=self.awaiting_snapshot)
        self.link.start()
        self._flush()

    def _flush(self) -> None:
        assert self.link is not None and self.conn is not None
        for frame in self.link.data_to_send():
            self.node.world.net.send(self.conn, self.node.name, frame)

    @property
    def done(self) -> bool:
        return self.pushed_all and self.in_flight == 0 and self.seq >= self.relay_head

    def _arm(self) -> None:
        if self._wait is not None:
            self._wait.cancel()
            self._wait = None
        if self.done:
            self._wait = self.sched.after(self.node.SETTLE, self._quiet)
        elif not self.pushing and self.relay_head >= 0:
            self._wait = self.sched.after(DOC_WAIT, self._quiet)

    async def _quiet(self) -> None:
        if self.node.session is not self:
            return
        if self.done:
            await self.node.round_over(self, None)  # pushed, answered, relay quiet
            return
        await self._push_more()  # the document exchange stalled: push all the same
        self._flush()
        self._arm()

    async def _push_next(self) -> None:
        assert self.link is not None
        self.pushing = True
        batch = await self.till.entries_after(self.heads, self.batch)
        if not batch:
            self.pushed_all = True
            return
        for entry in batch:
            self.heads[entry.device_id] = max(self.heads.get(entry.device_id, 0), entry.seq)
        self.link.send_entries(batch)
        self.in_flight += 1

    async def _push_more(self) -> None:
        while not self.pushed_all and self.in_flight < PUSH_WINDOW:
            await self._push_next()

    async def _doc_settled(self) -> None:
        assert self.link is not None
        message = self.till.master.sync_message(self.sync)
        if message is not None:
            self.link.send_doc(message)
        elif not self.pushing:
            await self._push_more()

    async def on_frame(self, data: bytes) -> None:
        assert self.link is not None
        if self._wait is not None:
            self._wait.cancel()
        try:
            self.link.receive_data(data)
            for event in self.link.events_received():
                await self._event(event)
            self._flush()
            if self.link.closed:
                raise SyncError("the relay closed the link")
        except SyncError as exc:
            self.node.world.note_round_error(self.node.name, exc)
            await self.node.round_over(self, str(exc))
            return
        self._arm()

    async def _event(self, event: Event) -> None:
        till = self.till
        if isinstance(event, Ready):
            # as peer.client._round: revocations first, then this till's certificate
            await till.add_revocations(event.revoked)
            if event.cert != till.cert:
                await till.add_certs([event.cert])
            self.heads = dict(event.heads)
            self.relay_head = event.receipts_head
            if not self.awaiting_snapshot:  # as peer.client: after the snapshot, if one comes
                await self._doc_settled()
        elif isinstance(event, Ingested):
            self.in_flight -= 1
            self.relay_head = max(self.relay_head, event.receipts_head)
            await self._push_more()
        elif isinstance(event, ReceiptsReceived):
            run = self.unvouched + event.receipts
            good_seq, good_head, problem = verify_receipts(
                till.relay_key or b"", run, self.seq, self.head)
            if problem is not None:
                raise SyncError(f"receipts from the relay do not verify: {problem}",
                                "bad_receipts")
            vouched = [r for r in run if r["server_seq"] <= good_seq]
            self.unvouched = [r for r in run if r["server_seq"] > good_seq]
            if vouched:
                await till.store_receipts(vouched, good_seq, good_head,
                                          self.sched.timestamp())
                self.seq, self.head = good_seq, good_head
            self.relay_head = max(self.relay_head, event.head)
        elif isinstance(event, DocSnapshot):
            self.node.world.stats["snapshots_received"] += 1
            await till.receive_document(self.sync, snapshot=event.data)
            if self.awaiting_snapshot:
                self.awaiting_snapshot = False
                await self._doc_settled()
        elif isinstance(event, DocMessage):
            self.awaiting_snapshot = False  # the relay had no snapshot to send
            self.doc_messages += 1
            if self.doc_messages == self.DOC_MESSAGES_MAX:
                # The relay once answered from two places (its pump and its handler) with
                # one sync state, and the exchange could run on until the round's time
                # limit (see README, "What it found").  Counted; a violation when
                # ``strict_doc`` (the default since the relay has one generator).
                self.node.world.stats["doc_exchange_runaway"] += 1
                if self.node.world.strict_doc:
                    self.node.world.violation(
                        f"{self.node.name}: the document exchange of one round did not "
                        f"settle in {self.DOC_MESSAGES_MAX} messages")
            await till.receive_document(self.sync, message=event.data)
            await self._doc_settled()
        elif isinstance(event, RemoteError | LinkFailed):
            raise SyncError(f"the relay refused: {event.message}", event.code)


class LanSession:
    """One LAN link between two tills, as ``peer.lan.session.PeerSession`` runs it (same
    events, same pushing: document, certificates, entries one batch in flight, receipts
    by stream position), driven by network events and the node's tick."""

    def __init__(self, node: TillNode, till: Till, conn: Conn, peer: str,
                 dialer: bool) -> None:
        self.node, self.till, self.conn, self.peer = node, till, conn, peer
        assert till.cert is not None and till.relay_key is not None
        self.link = PeerLink(store=till.store_id, cert=till.cert, key=till.key,
                             issuer=till.relay_key, nonce=node.world.rng.randbytes(32),
                             dialer=dialer,
                             revoked=lambda device: till.revoked_upto(device) is not None)
        self.sync = am.SyncState()
        self.doc: DocSync | None = None  # once the peer is known
        self.device: str | None = None  # the peer's device, once it is known
        self.peer_heads: dict[str, int] | None = None
        self.peer_receipts = 0
        self.in_flight = False
        self.certs_sent: set[str] = set()
        self.unvouched: list[dict[str, Any]] = []
        self.last_frame = node.world.sched.now

    @property
    def live(self) -> bool:
        return self.node.lan.get(self.conn.id) is self and self.node.till is self.till

    def start(self) -> None:
        self.link.start()
        self._flush()

    def _flush(self) -> None:
        for frame in self.link.data_to_send():
            self.node.world.net.send(self.conn, self.node.name, frame)
        if self.link.closed and self.live:
            self.node.close_lan(self)

    async def on_frame(self, data: bytes) -> None:
        self.last_frame = self.node.world.sched.now
        self.node.world.stats["lan_frames"] += 1
        self.link.receive_data(data)
        for event in self.link.events_received():
            if not self.live:
                return
            await self._on(event)
        if self.live:
            await self.push()

    async def _on(self, event: Event) -> None:
        till, link, stats = self.till, self.link, self.node.world.stats
        if isinstance(event, PeerAuthenticated):
            await till.add_certs([event.cert.raw])
            self.doc = DocSync(till.master, first=till.device_id < event.cert.device,
                               mesh=self.node.mesh, peer=event.cert.device)
            self.device = event.cert.device
            self.node.mesh.up(event.cert.device)
            link.send_have(till.heads(), till.receipts_position()[0])
            stats["lan_links"] += 1
        elif isinstance(event, HaveReceived):
            self.peer_heads = dict(event.heads)
            self.peer_receipts = event.receipts_head
        elif isinstance(event, RevokedReceived):
            await till.add_revocations(event.revoked)
        elif isinstance(event, CertsReceived):
            await till.add_certs(event.certs)
        elif isinstance(event, EntriesReceived):
            try:
                stored = await till.receive_entries(event.entries)
            except EntryRefused as exc:
                # refused, nothing stored, link closed (PeerSession); only an altered copy
                if not {e.client_id for e in event.entries} & self.node.world.net.tampered:
                    self.node.world.violation(f"{self.node.name}: a LAN peer's honest "
                                              f"entries were refused: {exc}")
                stats["lan_altered_batches_refused"] += 1
                link.fail("bad_entry", str(exc))
                return
            stats["lan_entries_forwarded"] += stored
            link.send_ingested(till.heads(), stored, till.receipts_position()[0])
        elif isinstance(event, Ingested):
            self.peer_heads = dict(event.heads)
            self.in_flight = False
        elif isinstance(event, ReceiptsReceived):
            await self._receipts(event.receipts)
        elif isinstance(event, LinksReceived):
            if self.device is not None:
                self.node.mesh.stated(self.device, event.devices)
        elif isinstance(event, DocMessage):
            assert self.doc is not None
            data = self.doc.received(event.data, till.master, edit=event.edit)
            if data != event.data:
                stats["lan_doc_heads_held"] += 1
            await till.receive_document(self.sync, message=data)
            self.doc.applied()
            stats["lan_doc_messages"] += 1
        elif isinstance(event, RemoteError | LinkFailed):
            stats[f"lan_error_{event.code}"] += 1
            if isinstance(event, RemoteError) and not event.fatal:
                self.in_flight = False

    async def _receipts(self, receipts: list[dict[str, Any]]) -> None:
        seq, head = self.till.receipts_position()
        run = [r for r in self.unvouched + receipts if r["server_seq"] > seq]
        if run and run[0]["server_seq"] != seq + 1:
            self.unvouched = []
            self.link.send_have(self.till.heads(), seq)
            return
        good_seq, good_head, problem = verify_receipts(self.till.relay_key or b"", run, seq,
                                                       head)
        if problem is not None:
            self.node.world.violation(f"{self.node.name}: receipts forwarded on the LAN do "
                                      f"not verify: {problem}")
            return
        vouched = [r for r in run if r["server_seq"] <= good_seq]
        self.unvouched = [r for r in run if r["server_seq"] > good_seq]
        if vouched:
            await self.till.store_receipts(vouched, good_seq, good_head,
                                           self.node.world.sched.timestamp())
            self.node.world.stats["lan_receipts_forwarded"] += len(vouched)

    async def push(self) -> None:
        """``PeerSession._push``, one pass."""
        till, link = self.till, self.link
        if link.state != "ready" or self.peer_heads is None or link.closed:
            self._flush()
            return
        assert self.doc is not None
        devices = self.doc.links_due()
        if devices is not None:
            link.send_links(devices)
        # An announcement not due yet goes out on a later pass (the node's tick).
        message, _ = self.doc.outgoing(till.master, self.sync, self.node.world.sched.now)
        if message is not None and self.doc.edit:
            link.send_edit(message)
            self.node.world.stats["lan_doc_edits_pushed"] += 1
        elif message is not None:
            link.send_doc(message)
        mine = till.heads()
        if not self.in_flight and any(seq > self.peer_heads.get(d, 0)
                                      for d, seq in mine.items()):
            batch = await till.entries_after(self.peer_heads, LAN_BATCH)
            if batch:
                certs = till.certs()
                new = sorted({e.device_id for e in batch} - self.certs_sent)
                if new:
                    link.send_certs([certs[d] for d in new if d in certs])
                    self.certs_sent.update(new)
                link.send_entries(batch)
                self.in_flight = True
        position = till.receipts_position()[0]
        while self.peer_receipts < position:
            receipts = await till.stream_after(self.peer_receipts, LAN_BATCH)
            if not receipts:
                break
            link.send_receipts(receipts, position)
            self.peer_receipts = receipts[-1]["server_seq"]
        self._flush()


# -- the relay ------------------------------------------------------------------------


@dataclass(eq=False)
class _Job:
    rc: RelayConn
    hub: StoreHub
    entries: list[Entry]
    keys: dict[str, bytes]
    checked: Checked


@dataclass(eq=False)
class RelayConn:
    """What ``Relay.handle`` keeps for one connection."""

    conn: Conn
    link: RelayLink
    hub: StoreHub | None = None
    sync: am.SyncState | None = None
    after: int = 0  # the pump's position in the receipt stream
    # Batches queued for the writer and not answered yet: handle reads no further frame
    # while ``INGEST_WINDOW`` of them wait.
    unanswered: int = 0
    inbox: deque[bytes] = field(default_factory=deque)
    events: deque[Event] = field(default_factory=deque)
    seen: Any = None  # the hub's ``changed`` event the pump last ran for
    pump_due: bool = False
    cert: bytes = b""  # the device's certificate, sent in welcome
    doc_after_device: bool = False  # a snapshot went out: no doc until the device's first

    @property
    def busy(self) -> bool:
        return self.unanswered >= INGEST_WINDOW


class RelayNode:
    KEEPALIVE = 20.0  # websockets' ping interval and timeout
    # Planted-bug switch (off: what relay/server.py does since 21d06f2).  On, the handler
    # also answers each document message itself, as the relay did before: two generators
    # of one connection's sync messages sharing one SyncState (tests/sim/README.md, "What
    # it found").  Only tests/sim/test_planted_bugs.py and the regression test turn it on.
    two_doc_generators = False

    def __init__(self, world: World, name: str, root: Path, key: DeviceKey) -> None:
        self.world = world
        self.name = name
        self.root = root
        self.key = key
        self.gen = 0
        self.storage: SQLiteStorage | None = None
        self.hubs: Hubs | None = None
        self.conns: dict[int, RelayConn] = {}
        self.jobs: list[_Job] = []
        self._writer: Timer | None = None
        self.per_frame = RECEIPTS_PER_FRAME
        self.fail_next_commit = False
        self.stall = 0.0  # seconds the next commit waits for the disk
        self.commits = 0
        self.batches = 0
        self.errors: Counter[str] = Counter()
        # what the relay has acknowledged: committed entries, and its stream head
        self.acked: dict[str, bytes] = {}
        self.acked_head: tuple[int, bytes] = (0, bytes(32))

    @property
    def dir(self) -> Path:
        return self.root / f"gen{self.gen}"

    @property
    def up(self) -> bool:
        return self.storage is not None

    def connections(self) -> list[Conn]:
        return [rc.conn for rc in self.conns.values()]

    async def start(self) -> None:
        # relay.server sends up to RECEIPTS_PER_FRAME receipts a frame; fewer now and then,
        # so that frames end inside a signed batch and the till must wait for the rest
        self.per_frame = self.world.rng.choice((2, 5, RECEIPTS_PER_FRAME))
        self.storage = await SQLiteStorage.open(self.dir / "relay.db")
        self.hubs = Hubs(self.storage)

    async def crash(self) -> None:
        assert self.storage is not None
        copy_disk(self.dir, self.root / f"gen{self.gen + 1}", ("relay.db", "relay.key"))
        self.world.net.drop_node(self.name)
        storage, self.storage, self.hubs = self.storage, None, None
        self.conns.clear()
        self.jobs.clear()
        if self._writer is not None:
            self._writer.cancel()
            self._writer = None
        await storage.close()
        shutil.rmtree(self.dir)
        self.gen += 1

    # -- network callbacks --------------------------------------------------------------

    async def on_accept(self, conn: Conn) -> bool:
        link = RelayLink(nonce=self.world.rng.randbytes(32))
        self.conns[conn.id] = RelayConn(conn, link)
        self._keepalive(conn)
        return True

    def _keepalive(self, conn: Conn) -> None:
        async def ping() -> None:
            if conn.id not in self.conns:
                return
            net = self.world.net
            client = net.nodes.get(conn.client)
            if (conn.open.get(conn.client) and client is not None and client.up
                    and net.reachable(conn.client, self.name)):
                self._keepalive(conn)
            else:  # no pong: websockets closes the connection
                self._close(self.conns[conn.id])

        self.world.sched.after(2 * self.KEEPALIVE, ping)

    async def on_frame(self, conn: Conn, data: bytes) -> None:
        rc = self.conns.get(conn.id)
        if rc is None:
            return
        if rc.busy:
            rc.inbox.append(data)  # handle() reads on once one of its batches is answered
            return
        await self._frame(rc, data)

    async def on_close(self, conn: Conn) -> None:
        self.conns.pop(conn.id, None)  # handle() ends; its pump is cancelled

    def _close(self, rc: RelayConn) -> None:
        self.conns.pop(rc.conn.id, None)
        self.world.net.close(rc.conn, self.name)

    def _flush(self, rc: RelayConn) -> None:
        for out in rc.link.data_to_send():
            self.world.net.send(rc.conn, self.name, out)

    def _internal(self, rc: RelayConn, exc: BaseException) -> None:
        """``handle``'s last resort: tell the device only that much, close."""
        # counted by cause: one injected commit fault fails every batch of its group
        # commit, so it makes one internal error per waiting connection
        cause = "commit_fault" if isinstance(exc, InjectedFault) else type(exc).__name__
        self.world.stats[f"relay_internal_errors_{cause}"] += 1
        if not isinstance(exc, InjectedFault):
            self.world.violation(f"relay internal error: {type(exc).__name__}: {exc}")
        rc.link.fail("internal", "the relay hit an internal error; try again later")
        self._flush(rc)
        self._close(rc)

    async def _frame(self, rc: RelayConn, data: bytes) -> None:
        rc.inbox.append(data)
        await self._drain(rc)

    async def _drain(self, rc: RelayConn) -> None:
        """Handle queued events, then queued frames, until a batch must wait for commit;
        frames go out once a frame's events are handled, as in ``handle``."""
        try:
            while rc.conn.id in self.conns and not rc.busy:
                if rc.events:
                    await self._event(rc, rc.events.popleft())
                    continue
                self._flush(rc)
                if rc.link.closed:
                    self._close(rc)
                    break
                if not rc.inbox:
                    break
                rc.link.receive_data(rc.inbox.popleft())
                rc.events.extend(rc.link.events_received())
        except Exception as exc:
            self._internal(rc, exc)
        self._wake_pumps()

    async def _event(self, rc: RelayConn, event: Event) -> None:
        storage, hubs, link = self.storage, self.hubs, rc.link
        assert storage is not None and hubs is not None
        if isinstance(event, HelloReceived):
            device = await storage.device(event.store, event.device)
            if device is None:
                link.fail("unknown_device", "this device is not enrolled in this store")
            elif device.revoked:
                link.fail("revoked", "this device has been revoked")
            else:
                rc.cert = Certificate.issue(self.key, store=device.store,
                                            device=device.device_id, name=device.name,
                                            role=device.role,
                                            public_key=device.public_key).raw
                link.challenge(device.public_key, self.key)
        elif isinstance(event, EnrollRequested):
            link.fail("bad_code", "the simulation enrolls devices beforehand")
        elif isinstance(event, Authenticated):
            hub = await hubs.get(event.store)
            rc.hub, rc.sync = hub, am.SyncState()
            await storage.touch(event.store, event.device, self.world.sched.timestamp())
            link.welcome(await storage.heads(event.store),
                         await storage.stream_position(event.store), rc.cert, [])
            if event.doc_empty and not hub.doc.is_genesis():
                link.send_snapshot(hub.doc.save())
                rc.doc_after_device = True
            if self.two_doc_generators:
                self._answer_doc(rc, hub)
            rc.after = event.receipts_after  # the pump's first pass sends the first doc message
            self._flush(rc)
            self._schedule_pump(rc)
        elif isinstance(event, EntriesReceived):
            assert rc.hub is not None
            keys = {}
            for device_id in {e.device_id for e in event.entries}:
                device = await storage.device(rc.hub.store, device_id)
                if device is not None and not device.revoked:
                    keys[device_id] = device.public_key
            self.jobs.append(_Job(rc, rc.hub, event.entries, keys, prepare(event.entries)))
            if rc.unanswered:  # taken in while an earlier batch of the link waits
                self.world.stats["relay_batches_behind_another"] += 1
            rc.unanswered += 1
            if self._writer is None:
                # the writer picks the job up at once, or after others joined it, or
                # after a disk stall long enough for the till to give up and send again
                delay = self.stall or self.world.rng.choice((0.0, 0.002, 0.05))
                self.stall = 0.0
                self._writer = self.world.sched.after(delay, self._write)
        elif isinstance(event, DocMessage):
            assert rc.hub is not None and rc.sync is not None
            rc.doc_after_device = False
            hub = rc.hub
            try:
                chunks = hub.doc.receive_sync(rc.sync, event.data)
            except InvalidInput as exc:
                link.fail("bad_document", str(exc), fatal=False)
                return
            await hubs.persist(hub, chunks)
            if chunks:
                hub.document_changed()
            if self.two_doc_generators:
                self._answer_doc(rc, hub)
            self._schedule_pump(rc)  # the pump answers: the one generator of doc messages
        elif isinstance(event, LinkFailed | RemoteError):
            self.errors[event.code] += 1

    def _answer_doc(self, rc: RelayConn, hub: StoreHub) -> None:
        """The handler's own reply (the old second generator): only when planted."""
        assert rc.sync is not None
        self.world.stats["doc_messages_from_handler"] += 1
        reply = hub.doc.sync_message(rc.sync)
        if reply is not None:
            rc.link.send_doc(reply)

    # -- the writer: group commit ---------------------------------------------------------

    async def _write(self) -> None:
        self._writer = None
        storage = self.storage
        if storage is None or not self.jobs:
            return
        jobs, self.jobs = self.jobs[:MAX_JOBS_PER_COMMIT], self.jobs[MAX_JOBS_PER_COMMIT:]
        results: list[IngestResult] = []
        now = self.world.sched.timestamp()
        failure: BaseException | None = None
        try:
            async with storage.transaction() as txn:
                results = await ingest_all(txn, [
                    Batch(job.hub.store, job.entries, job.keys, job.hub.product, self.key,
                          job.checked) for job in jobs], now)
                if self.fail_next_commit:
                    self.fail_next_commit = False
                    self.world.stats["commit_faults"] += 1
                    raise InjectedFault("the disk refused the commit")
        except Exception as exc:  # nothing of these batches was stored
            failure = exc
        if failure is not None:
            self.world.stats["commit_failed_batches"] += len(jobs)
        if failure is None:
            self.commits += 1
            self.batches += len(jobs)
            stats = self.world.stats
            stats["group_commits"] += len(jobs) > 1
            for job, result in zip(jobs, results, strict=True):
                stats["relay_duplicates_skipped"] += result.duplicates
                stats["relay_gaps_seen"] += len(result.gaps)
                stats["receipts_waiting"] += sum(r["status"] == "waiting"
                                                 for r in result.receipts)
                if result.receipts:
                    job.hub.publish(result.receipts, result.position, self.per_frame,
                                    result.packed)
                    self.acked_head = (result.position, result.receipts[-1]["prev"])
                    self.world.note_receipts(result.receipts)
                for entry in job.entries:
                    if result.heads.get(entry.device_id, 0) >= entry.seq:
                        self.acked.setdefault(entry.client_id, entry.hash)
        conts: list[Callable[[], Awaitable[None]]] = []
        for i, job in enumerate(jobs):
            rc = job.rc
            if failure is not None:
                conts.append(partial(self._failed_job, rc, failure))
            else:
                conts.append(partial(self._job_done, rc, job, results[i]))
        self._wake_pumps(conts)
        if self.jobs and self._writer is None:
            self._writer = self.world.sched.after(0, self._write)

    async def _failed_job(self, rc: RelayConn, failure: BaseException) -> None:
        if rc.conn.id in self.conns:
            rc.unanswered -= 1
            self._internal(rc, failure)

    async def _job_done(self, rc: RelayConn, job: _Job, result: IngestResult) -> None:
        if rc.conn.id not in self.conns or self.storage is None:
            return
        rc.link.send_ingested(result.heads, len(job.entries), result.position)
        rc.unanswered -= 1
        self._flush(rc)
        await self._drain(rc)

    # -- pumps --------------------------------------------------------------------------

    def _schedule_pump(self, rc: RelayConn) -> None:
        if not rc.pump_due:
            rc.pump_due = True
            self.world.sched.after(0, partial(self._pump, rc))

    def _wake_pumps(self, more: list[Callable[[], Awaitable[None]]] | None = None) -> None:
        """Pumps whose hub signalled a change run next, in an order the seed picks,
        mixed with ``more`` (the writer's waiting connections): asyncio may run either
        first."""
        todo = list(more or [])
        for rc in self.conns.values():
            if rc.hub is not None and rc.seen is not rc.hub.changed and not rc.pump_due:
                rc.pump_due = True
                todo.append(partial(self._pump, rc))
        self.world.rng.shuffle(todo)
        for fn in todo:
            self.world.sched.after(0, fn)

    async def _pump(self, rc: RelayConn) -> None:
        """``Relay._pump``, one pass: receipts after ``rc.after``, then a doc message."""
        rc.pump_due = False
        storage = self.storage
        if rc.conn.id not in self.conns or rc.hub is None or storage is None:
            return
        hub = rc.hub
        rc.seen = hub.changed
        try:
            while True:
                ready = hub.frame_after(rc.after)
                if ready is not None:
                    rc.after, frame = ready
                    self.world.net.send(rc.conn, self.name, frame)
                    continue
                receipts = await storage.receipts_after(hub.store, rc.after, self.per_frame)
                if not receipts:
                    break
                rc.after = receipts[-1]["server_seq"]
                rc.link.send_receipts(receipts, await storage.stream_position(hub.store))
                self._flush(rc)
            assert rc.sync is not None
            message = None if rc.doc_after_device else hub.doc.sync_message(rc.sync)
            if message is not None:
                rc.link.send_doc(message)
                self._flush(rc)
        except Exception as exc:
            self._internal(rc, exc)

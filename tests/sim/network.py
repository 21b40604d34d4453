"""Simulated time and a simulated network, deterministic from one seed.

``Scheduler`` is the clock: a heap of timed callbacks run one at a time, each to
completion (awaiting whatever store I/O it does) before the next starts, so the order of
everything that happens is fixed by (time, insertion order) and the seed, never by
threads or the host's clock.

``Network`` carries frames over connections between named nodes.  A connection behaves
like a websocket over TCP (ordered, each frame once) unless faults say otherwise:

* ``partition(a, b)``: new connections between a and b time out, and the frames of live
  ones wait, in order, until the partition heals (TCP retransmits; it never loses one
  frame of a live connection).  A connection that stays cut is closed by its ends'
  timeouts (the till's round limit, the relay's keepalive), as in the real system;
* ``Faults``: per frame, a chance that the connection breaks there (TCP never loses a
  single frame of a live connection), or that it is delayed for a long time; and, for
  ``entries`` frames (which a client may re-send or pipeline), a chance to arrive twice,
  out of order (overtaking or falling behind others), or altered (one entry's body
  changed: a corrupted or forged copy).  Other frames keep TCP's order and
  exactly-once delivery: Automerge's sync state is not built for a lost or repeated
  message within one session.

A connection is between a *client* node (the one that dials) and a *server* node; any
node may be either, so a till-to-till (LAN) link is one more ``connect(till_a, till_b)``
with till_b attached as a server.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Protocol

import msgpack

EPOCH = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)


class Timer:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Scheduler:
    """Virtual time in seconds since ``EPOCH``; callbacks are coroutines, run in order."""

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, Timer, Callable[[], Awaitable[None]]]] = []
        self._n = 0
        self.events_run = 0

    def datetime(self) -> datetime:
        return EPOCH + timedelta(seconds=self.now)

    def timestamp(self) -> str:
        return self.datetime().isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def after(self, delay: float, fn: Callable[[], Awaitable[None]]) -> Timer:
        timer = Timer()
        self._n += 1
        heapq.heappush(self._heap, (self.now + max(0.0, delay), self._n, timer, fn))
        return timer

    def pending(self) -> int:
        return sum(1 for item in self._heap if not item[2].cancelled)

    async def run_until(self, until: float, limit: int | None = None) -> None:
        """Run every callback due up to ``until`` (or ``limit`` of them), then set the
        clock to it."""
        start = self.events_run
        while self._heap and self._heap[0][0] <= until:
            if limit is not None and self.events_run - start >= limit:
                return
            when, _, timer, fn = heapq.heappop(self._heap)
            if timer.cancelled:
                continue
            self.now = max(self.now, when)
            self.events_run += 1
            await fn()
        self.now = max(self.now, until)


@dataclass
class Faults:
    """Chances per frame (0..1)."""

    drop: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    delay: float = 0.0
    tamper: float = 0.0  # an entries frame arrives with one entry's body altered

    @property
    def any(self) -> bool:
        return bool(self.drop or self.duplicate or self.reorder or self.delay or self.tamper)


class Endpoint(Protocol):
    """What a node offers the network."""

    name: str

    @property
    def up(self) -> bool: ...
    async def on_accept(self, conn: Conn) -> bool: ...
    async def on_frame(self, conn: Conn, data: bytes) -> None: ...
    async def on_close(self, conn: Conn) -> None: ...


@dataclass(eq=False)
class Conn:
    id: int
    client: str
    server: str
    open: dict[str, bool] = field(default_factory=dict)
    # last scheduled delivery time per direction (destination name), for FIFO order
    tail: dict[str, float] = field(default_factory=dict)
    # frames (None: the close) waiting for a partition to heal, per destination, in order
    held: dict[str, list[bytes | None]] = field(default_factory=dict)

    def other(self, name: str) -> str:
        return self.server if name == self.client else self.client

    def __repr__(self) -> str:
        return f"Conn#{self.id}({self.client}->{self.server})"


class Network:
    # Planted-bug switch (off: the model since the runaway it caused was found).  On, a
    # frame that meets a partition is lost while its connection lives on, which TCP never
    # does; Automerge's sync state cannot recover from a lost message within a session
    # and the document exchange runs away (tests/sim/README.md, "What it found").
    lossy_partitions = False
    LATENCY = (0.001, 0.020)  # seconds, uniform
    LONG_DELAY = (1.0, 45.0)
    CONNECT_TIMEOUT = 10.0

    def __init__(self, scheduler: Scheduler, rng: random.Random,
                 stats: Counter[str]) -> None:
        self.sched = scheduler
        self.rng = rng
        self.stats = stats
        self.nodes: dict[str, Endpoint] = {}
        self.cut: set[frozenset[str]] = set()
        self.faults = Faults()
        self._ids = 0
        self.trace: list[str] = []
        self.tracing = False
        self.tampered: set[str] = set()  # client_ids of entries sent altered
        self._holding: set[Conn] = set()  # connections with frames held by a partition

    def attach(self, node: Endpoint) -> None:
        self.nodes[node.name] = node

    # -- partitions --------------------------------------------------------------------

    def reachable(self, a: str, b: str) -> bool:
        return frozenset((a, b)) not in self.cut

    def partition(self, a: str, b: str) -> None:
        if self.reachable(a, b):
            self.stats["partitions"] += 1
        self.cut.add(frozenset((a, b)))

    def heal(self, a: str, b: str) -> None:
        self.cut.discard(frozenset((a, b)))
        self._release_held()

    def heal_all(self) -> None:
        self.cut.clear()
        self.faults = Faults()
        self._release_held()

    def _release_held(self) -> None:
        """Held frames of connections no longer cut move on (TCP's next retransmission)."""
        for conn in sorted(self._holding, key=lambda c: c.id):
            for dst, frames in conn.held.items():
                if frames and self.reachable(dst, conn.other(dst)):
                    self.sched.after(self.rng.uniform(*self.LATENCY),
                                     partial(self._release, conn, dst))

    # -- connections -------------------------------------------------------------------

    async def connect(self, client: str, server: str,
                      done: Callable[[Conn | None], Awaitable[None]]) -> None:
        """Dial ``server``; ``done`` gets the connection, or None after a refusal (server
        down: at once) or a timeout (partitioned: after ``CONNECT_TIMEOUT``)."""
        self._ids += 1
        conn = Conn(self._ids, client, server, {client: True, server: True})

        async def attempt() -> None:
            target = self.nodes.get(server)
            if not self.reachable(client, server):
                self.sched.after(self.CONNECT_TIMEOUT - 2 * self.LATENCY[1],
                                 lambda: done(None))
                return
            if target is None or not target.up or not await target.on_accept(conn):
                await done(None)
                return
            if self.tracing:
                self.trace.append(f"{self.sched.now:.6f} connect {conn}")
            await done(conn)

        self.sched.after(2 * self.rng.uniform(*self.LATENCY), attempt)

    def send(self, conn: Conn, src: str, data: bytes) -> None:
        if not conn.open.get(src):
            return
        self._put(conn, src, data)

    def close(self, conn: Conn, src: str) -> None:
        """``src`` closes its end; the other end learns it when the close arrives."""
        if conn.open.get(src):
            conn.open[src] = False
            self._put(conn, src, None)

    def _put(self, conn: Conn, src: str, data: bytes | None) -> None:
        dst = conn.other(src)
        copies = 1
        delay = self.rng.uniform(*self.LATENCY)
        fifo = True
        if data is not None and self.faults.any:
            roll = self.rng.random()
            f = self.faults
            if roll < f.drop:
                # TCP never loses one frame of a live connection: the connection dies
                self.stats["connections_reset"] += 1
                self.reset(conn)
                return
            roll -= f.drop
            if msgpack.unpackb(data)["t"] != "entries":
                pass  # in order and exactly once, as over TCP
            elif roll < f.duplicate:
                self.stats["frames_duplicated"] += 1
                copies = 2
            elif roll - f.duplicate < f.reorder:
                self.stats["frames_reordered"] += 1
                fifo = False
                delay = self.rng.uniform(0.0, 0.5)
            elif roll - f.duplicate - f.reorder < f.delay:
                self.stats["frames_delayed"] += 1
                delay = self.rng.uniform(*self.LONG_DELAY)
            elif roll - f.duplicate - f.reorder - f.delay < f.tamper:
                data = self._tamper(data)
        for _ in range(copies):
            when = self.sched.now + delay
            if fifo:
                when = max(when, conn.tail.get(dst, 0.0))
                conn.tail[dst] = when
            self.sched.after(when - self.sched.now, partial(self._deliver, conn, src, data))
            delay = self.rng.uniform(*self.LATENCY)

    def reset(self, conn: Conn) -> None:
        """The connection breaks: each end that was open learns it (no more frames)."""
        for end in (conn.client, conn.server):
            if conn.open.get(end):
                conn.open[end] = False
                self.sched.after(self.rng.uniform(*self.LATENCY), partial(self._reset, conn, end))

    async def _reset(self, conn: Conn, end: str) -> None:
        node = self.nodes.get(end)
        if node is not None and node.up:
            await node.on_close(conn)

    def _tamper(self, data: bytes) -> bytes:
        """Flip one bit of one entry's body in an entries frame (a forged or corrupted
        copy: same client_id, seq and signature, other content)."""
        frame = msgpack.unpackb(data, raw=False)
        if frame.get("t") != "entries" or not frame["entries"]:
            return data
        entry = self.rng.choice(frame["entries"])
        body = bytearray(entry[7])
        if not body:
            return data
        body[self.rng.randrange(len(body))] ^= 1 << self.rng.randrange(8)
        entry[7] = bytes(body)
        self.stats["frames_tampered"] += 1
        # the altered one, and those after it in the frame, which now follow a link the
        # relay cannot verify
        self.tampered.update(e[0] for e in frame["entries"])
        packed: bytes = msgpack.packb(frame, use_bin_type=True)
        return packed

    async def _deliver(self, conn: Conn, src: str, data: bytes | None) -> None:
        dst = conn.other(src)
        node = self.nodes.get(dst)
        if self.lossy_partitions and not self.reachable(src, dst):
            node = None  # the planted model: the frame is lost, the connection lives on
        if node is None or not node.up:
            if data is not None:
                self.stats["frames_lost_to_faults"] += 1
            return
        if not conn.open.get(dst):
            return  # that end is closed: the frame goes nowhere
        held = conn.held.setdefault(dst, [])
        if held or not self.reachable(src, dst):
            held.append(data)  # behind the partition, or behind frames held by it
            self._holding.add(conn)
            self.stats["frames_held_by_partitions"] += 1
            return
        await self._arrive(conn, src, node, data)

    async def _release(self, conn: Conn, dst: str) -> None:
        src, held = conn.other(dst), conn.held.get(dst, [])
        while held and self.reachable(src, dst):
            node = self.nodes.get(dst)
            if node is None or not node.up or not conn.open.get(dst):
                held.clear()  # that end died or closed: the frames go nowhere
                break
            await self._arrive(conn, src, node, held.pop(0))
        if not any(conn.held.values()):
            self._holding.discard(conn)

    async def _arrive(self, conn: Conn, src: str, node: Endpoint, data: bytes | None) -> None:
        dst = node.name
        if not conn.open.get(dst):
            return
        self.stats["frames_delivered"] += 1
        if self.tracing:
            what = "close" if data is None else str(msgpack.unpackb(data)["t"])
            self.trace.append(f"{self.sched.now:.6f} #{conn.id} {src}->{dst} {what}")
        if data is None:
            conn.open[dst] = False
            await node.on_close(conn)
        else:
            await node.on_frame(conn, data)

    def drop_node(self, name: str) -> None:
        """A node died: the kernel closes its sockets (the close packets still travel)."""
        for conn in self._open_conns(name):
            self.close(conn, name)

    def _open_conns(self, name: str) -> list[Conn]:
        # Connections are owned by the nodes; they tell us which ones they hold.
        node = self.nodes.get(name)
        conns: list[Conn] = list(getattr(node, "connections", lambda: [])())
        return conns

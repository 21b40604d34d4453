"""Real processes for the relay's acceptance tests: a relay process, tills driven by the
command line, the relay's database read directly, and a raw websocket link.

Every wait has a timeout, and ``Relays`` kills every relay process it started when its
``with`` block ends, whatever happened inside it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import msgpack
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.doubles import REPO
from tests.relay.databases import pg_query
from tillsync.peer.identity import DeviceKey
from tillsync.peer.log import Entry, seal, seal_bytes
from tillsync.peer.store import Till
from tillsync.peer.sync.engine import (
    ClientLink,
    DocMessage,
    DocSnapshot,
    Enrolled,
    Event,
    Ingested,
    LinkFailed,
    Ready,
    ReceiptsReceived,
    RemoteError,
)
from tillsync.peer.sync.frames import PROTOCOL_VERSION, TRANSPORT_MAX
from tillsync.relay.server import Relay

START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
CLI_TIMEOUT = 60.0
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
T = TypeVar("T")
_LISTENING = re.compile(r"relay listening on wss?://([0-9.]+):([0-9]+)")


# -- the relay process ---------------------------------------------------------------


class RelayProcess:
    """``python -m tillsync.tools.cli relay serve`` on ``data`` (and the PostgreSQL database ``db``
    if given); stdout and stderr go to files.  ``extra``: more arguments for serve."""

    def __init__(self, data: Path, logs: Path, port: int = 0, db: str | None = None,
                 extra: Sequence[str] = ()) -> None:
        self.data, self.logs = data, logs
        self.port = port
        self.db = db
        self.extra = list(extra)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, port: int | None = None, timeout: float = START_TIMEOUT) -> int:
        """Start the process (``port``: this one, default the last one, or 0 for any) and
        wait until it says where it listens; returns the port."""
        assert not self.alive, "the relay is already running"
        self.starts += 1
        want = self.port if port is None else port
        out = self.logs / f"relay-{self.starts}.out"
        err = self.logs / f"relay-{self.starts}.err"
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tillsync.tools.cli",
                 "relay", "serve", "--data", str(self.data),
                 "--port", str(want), *(("--db", self.db) if self.db else ()), *self.extra],
                stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL, env=ENV,
                start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = _LISTENING.search(out.read_text(errors="replace"))
            if found:
                self.port = int(found.group(2))
                return self.port
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.kill()
        raise AssertionError(f"relay did not start (port {want}): exit {self.proc.returncode}\n"
                             f"{err.read_text(errors='replace')[-3000:]}")

    def kill(self) -> None:
        """SIGKILL, and reap it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=STOP_TIMEOUT)

    def wait_log(self, text: str, timeout: float = START_TIMEOUT) -> bool:
        """Wait until the running process has logged ``text``; False on timeout or exit."""
        log = self.logs / f"relay-{self.starts}.err"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.alive:
            if text in log.read_text(errors="replace"):
                return True
            time.sleep(0.005)
        return False

    def stderr(self) -> str:
        return "".join(p.read_text(errors="replace")
                       for p in sorted(self.logs.glob("relay-*.err")))


class Relays:
    """Starts relay processes (on the PostgreSQL database ``db`` if given, else each on
    its own SQLite file); kills all of them on exit."""

    def __init__(self, root: Path, db: str | None = None) -> None:
        self.root = root
        self.db = db
        self.started: list[RelayProcess] = []

    def start(self, name: str = "relay", port: int = 0, *, data: Path | None = None,
              extra: Sequence[str] = ()) -> RelayProcess:
        """``data``: another relay's folder, for a second process of the same relay (its
        key) on the same database."""
        relay = RelayProcess(data or self.root / name / "data", self.root / name / "logs", port,
                             self.db, extra)
        self.started.append(relay)
        relay.start()
        return relay

    def __enter__(self) -> Relays:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        for relay in self.started:
            relay.kill()


def stop(proc: subprocess.Popen[bytes], signum: int = signal.SIGTERM,
         timeout: float = 30.0) -> None:
    """Ask a process to stop with ``signum``; SIGKILL it if it has not within
    ``timeout`` seconds (what a test's clean-up does, whatever the test found)."""
    proc.send_signal(signum)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def refused_url() -> str:
    """A websocket url on a local port that nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"ws://127.0.0.1:{port}"


# -- the command line ---------------------------------------------------------------


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "tillsync.tools.cli",
                             *args], capture_output=True,
                            text=True, env=ENV, timeout=CLI_TIMEOUT, stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise AssertionError(f"tillsync {' '.join(args)} -> {result.returncode}\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


def cli_json(*args: str) -> Any:
    return json.loads(run_cli(*args, "--json").stdout)


def in_thread(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion on its own loop in another thread: usable from sync
    and async tests alike (the blocking is fine here)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result(timeout=CLI_TIMEOUT)


def parallel(*calls: Callable[[], T]) -> list[T]:
    """Run blocking calls (e.g. command lines) side by side; results in order."""
    with ThreadPoolExecutor(len(calls)) as pool:
        futures = [pool.submit(call) for call in calls]
        return [f.result(timeout=CLI_TIMEOUT * 2) for f in futures]


def on_relay(data: Path, db: str | None,
             act: Callable[[Relay], Coroutine[Any, Any, T]]) -> T:
    """``act`` on the relay of ``data`` (and ``db``) opened in this process, as the
    `relay` commands do, minus the interpreter start; closed again after."""
    async def run() -> T:
        opened = await Relay.open(data, db)
        try:
            return await act(opened)
        finally:
            await opened.close()
    return in_thread(run)


def quick_code(relay: RelayProcess, store: str, name: str) -> str:
    """An enrollment code made in this process (what `relay enroll` does): for tests
    where the command line adds nothing."""
    return on_relay(relay.data, relay.db, lambda opened: opened.new_code(store, name))


def store_key(data: Path, store: str, db: str | None = None) -> bytes:
    """The public key that signs for ``store`` at the relay on ``data`` (and ``db``)."""
    async def read(opened: Relay) -> bytes:
        return (await opened.store_key(store)).public_bytes
    return on_relay(data, db, read)


def enroll_code(relay: RelayProcess, store: str, name: str, role: str = "admin") -> str:
    """A code from `relay enroll`.  Role admin by default: the tests' tills also set up
    the catalogue (tests/relay/test_roles.py is about the 'till' role)."""
    code = cli_json("relay", "enroll", "--data", str(relay.data), "--store", store,
                    "--name", name, "--role", role,
                    *(("--db", relay.db) if relay.db else ()))["code"]
    assert isinstance(code, str) and code
    return code


@dataclass
class TillDir:
    """One till's store directory, driven through the command line."""

    path: Path
    name: str

    def init(self, relay: RelayProcess, store: str, role: str = "admin") -> dict[str, Any]:
        info: dict[str, Any] = cli_json("peer", "init", str(self.path), "--name", self.name,
                                        "--relay", relay.url,
                                        "--code", enroll_code(relay, store, self.name, role))
        assert info["store_id"] == store
        return info

    def put(self, collection: str, record_id: str, body: dict[str, Any]) -> None:
        run_cli("peer", "put", str(self.path), collection, record_id, "--body", json.dumps(body))

    def put_many(self, records: Sequence[tuple[str, str, dict[str, Any]]]) -> None:
        """Master data written through ``Till`` in this process, in one go."""
        async def put() -> None:
            async with await Till.open(self.path, wait=10.0) as till:
                for collection, record_id, body in records:
                    await till.put(collection, record_id, body)
        in_thread(put)

    def master(self, collection: str) -> dict[str, dict[str, Any]]:
        async def read() -> dict[str, dict[str, Any]]:
            async with await Till.open(self.path, readonly=True) as till:
                return till.all(collection)
        return in_thread(read)

    def record(self, kind: str, body: dict[str, Any], client_id: str | None = None
               ) -> dict[str, Any]:
        extra = ("--client-id", client_id) if client_id else ()
        entry: dict[str, Any] = cli_json("peer", "record", str(self.path), kind, "--body",
                                         json.dumps(body), *extra)
        return entry

    def sync(self, relay_url: str | None = None, check: bool = True
             ) -> subprocess.CompletedProcess[str]:
        extra = ("--relay", relay_url) if relay_url else ()
        return run_cli("peer", "sync", str(self.path), "--once", "--json", *extra, check=check)

    def sync_json(self, relay_url: str | None = None) -> dict[str, Any]:
        report: dict[str, Any] = json.loads(self.sync(relay_url).stdout)
        return report

    def receipts(self, mine: bool = False) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = cli_json("peer", "receipts", str(self.path),
                                              *(("--mine",) if mine else ()))
        return rows

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = cli_json("peer", "status", str(self.path))
        return status

    @property
    def key(self) -> DeviceKey:
        return DeviceKey.read(self.path)


def rogue_put(path: Path, records: Sequence[tuple[str, str, dict[str, Any]]]) -> None:
    """Master-data edits past the till's own role check, as a modified build could make
    them: what the relay and the LAN peers must refuse by themselves."""
    async def put() -> None:
        async with await Till.open(path, wait=10.0) as till:
            till._may_edit = lambda *args: None  # type: ignore[method-assign]
            for collection, record_id, body in records:
                await till.put(collection, record_id, body)
    in_thread(put)


# -- the relay's database -----------------------------------------------------------


def query(relay: RelayProcess, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
    """Read the relay's database (committed data only; WAL lets us read while it runs),
    or change it.  ``?`` placeholders, on either backend."""
    if relay.db:
        return pg_query(relay.db, sql, tuple(args))
    conn = sqlite3.connect(relay.data / "relay.db", timeout=10)
    try:
        rows = list(conn.execute(sql, args).fetchall())
        conn.commit()  # for the tests that change it behind the relay's back
        return rows
    finally:
        conn.close()


def invoices(relay: RelayProcess, store: str) -> list[tuple[str, int, str, str, str | None, int]]:
    """(series, invoice_no, client_id, device_id, ticket, total), by number."""
    return [tuple(r) for r in query(  # type: ignore[misc]
        relay, "SELECT series, invoice_no, client_id, device_id, ticket, total FROM invoices "
        "WHERE store = ? ORDER BY series, invoice_no", (store,))]


def relay_receipts(relay: RelayProcess, store: str) -> list[dict[str, Any]]:
    """The store's receipt stream as the relay holds it, by position."""
    return [msgpack.unpackb(r[0], raw=False) for r in query(
        relay, "SELECT data FROM receipts WHERE store = ? ORDER BY server_seq", (store,))]


def stream_position(relay: RelayProcess, store: str) -> int:
    rows = query(relay, "SELECT seq FROM stream_heads WHERE store = ?", (store,))
    return int(rows[0][0]) if rows else 0


def snapshot(relay: RelayProcess, store: str) -> dict[str, Any]:
    """Everything a bad input must not change: invoices, receipts, counters, mappings,
    stock, prices and the stored chains."""
    tables = {
        "invoices": "SELECT * FROM invoices WHERE store = ? ORDER BY series, invoice_no",
        "receipts": "SELECT server_seq, client_id, data FROM receipts WHERE store = ? "
                    "ORDER BY server_seq",
        "counters": "SELECT name, value FROM counters WHERE store = ? ORDER BY name",
        "mappings": "SELECT kind, client_id, server_id FROM mappings WHERE store = ? "
                    "ORDER BY kind, client_id",
        "stock": "SELECT product_id, qty FROM stock WHERE store = ? ORDER BY product_id",
        "prices": "SELECT product_id, price FROM prices WHERE store = ? ORDER BY product_id",
        "entries": "SELECT device_id, seq, client_id, hash FROM entries WHERE store = ? "
                   "ORDER BY device_id, seq",
        "stream": "SELECT seq, hash FROM stream_heads WHERE store = ?",
    }
    return {name: query(relay, sql, (store,)) for name, sql in tables.items()}


# -- entries built by hand ----------------------------------------------------------


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


@dataclass
class Chain:
    """A device's chain built by hand (for devices the tests play themselves)."""

    key: DeviceKey
    device_id: str
    seq: int = 0
    prev: bytes = bytes(32)
    tickets: int = 0
    entries: list[Entry] = field(default_factory=list)

    def next(self, kind: str, body: dict[str, Any] | None = None, *,
             body_bytes: bytes | None = None, client_id: str | None = None,
             key: DeviceKey | None = None, prev: bytes | None = None,
             seq: int | None = None, advance: bool = True) -> Entry:
        """The next entry of this chain; ``key``/``prev``/``seq`` forge a bad one, and
        ``advance=False`` leaves the chain where it was."""
        ticket = None
        if kind == "sale":
            ticket = f"RAW-{self.tickets + 1:06d}"
        fields: dict[str, Any] = dict(
            client_id=client_id or str(uuid.uuid4()), device_id=self.device_id,
            seq=self.seq + 1 if seq is None else seq,
            prev=self.prev if prev is None else prev, kind=kind,
            client_created_at=now(), ticket=ticket)
        if body_bytes is not None:
            entry = seal_bytes(key or self.key, body_bytes=body_bytes, **fields)
        else:
            assert body is not None
            entry = seal(key or self.key, body=body, **fields)
        if advance:
            self.seq, self.prev = entry.seq, entry.hash
            self.tickets += ticket is not None
            self.entries.append(entry)
        return entry


# -- a raw link ---------------------------------------------------------------------


class RawSession:
    """A device's link to the relay driven by hand: handshake, then frames one by one."""

    def __init__(self, ws: ClientConnection, link: ClientLink) -> None:
        self.ws, self.link = ws, link
        self.ready: Ready | None = None
        self.receipts: list[dict[str, Any]] = []
        self.events: list[Event] = []

    @classmethod
    async def open(cls, url: str, store: str, device: str, key: DeviceKey, *,
                   receipts_after: int = 0, timeout: float = 10.0) -> RawSession:
        ws = await asyncio.wait_for(connect(url, max_size=TRANSPORT_MAX, compression=None),
                                    timeout)
        link = ClientLink(store=store, device=device, key=key, nonce=os.urandom(32),
                          receipts_after=receipts_after)
        session = cls(ws, link)
        link.start()
        await session.flush()
        ready = await session.wait_for(lambda e: isinstance(e, Ready), timeout)
        assert isinstance(ready, Ready)
        session.ready = ready
        return session

    async def flush(self) -> None:
        for frame in self.link.data_to_send():
            await self.ws.send(frame)

    async def wait_for(self, wanted: Callable[[Event], bool], timeout: float = 10.0) -> Event:
        """Read frames until an event ``wanted`` accepts; refuses errors on the way."""
        async with asyncio.timeout(timeout):
            while True:
                for event in await self._next():
                    if wanted(event):
                        return event
                    if isinstance(event, RemoteError | LinkFailed):
                        raise AssertionError(f"the relay sent an error: {event}")

    async def quiet(self, seconds: float) -> list[Event]:
        """Every event that arrives within ``seconds``."""
        got: list[Event] = []
        try:
            async with asyncio.timeout(seconds):
                while True:
                    got.extend(await self._next())
        except TimeoutError:
            pass
        return got

    async def _next(self) -> list[Event]:
        frame = await self.ws.recv()
        self.link.receive_data(frame)
        events = self.link.events_received()
        for event in events:
            self.events.append(event)
            if isinstance(event, ReceiptsReceived):
                self.receipts.extend(event.receipts)
            elif not isinstance(event, DocMessage | DocSnapshot | Ingested | Ready | Enrolled
                                | RemoteError | LinkFailed):
                raise AssertionError(f"unexpected event {event}")
        await self.flush()  # e.g. an error frame the link queued
        return events

    async def push(self, entries: list[Entry], timeout: float = 10.0) -> Ingested:
        self.link.send_entries(entries)
        await self.flush()
        ingested = await self.wait_for(lambda e: isinstance(e, Ingested), timeout)
        assert isinstance(ingested, Ingested)
        return ingested

    async def receipts_until(self, position: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Read until the receipts up to stream ``position`` have arrived."""
        async with asyncio.timeout(timeout):
            while not self.receipts or self.receipts[-1]["server_seq"] < position:
                await self._next()
        return self.receipts

    async def close(self) -> None:
        await asyncio.wait_for(self.ws.close(), 10)


async def raw_exchange(url: str, frames: Sequence[bytes | str], timeout: float = 10.0
                       ) -> tuple[list[dict[str, Any]], bool]:
    """Send raw frames on a fresh connection; return the decoded frames received until
    the relay closes it or goes quiet for a moment, and whether it closed."""
    received: list[dict[str, Any]] = []
    closed = False
    async with asyncio.timeout(timeout):
        ws = await connect(url, max_size=None, compression=None)
        try:
            for frame in frames:
                await ws.send(frame)
            while True:
                try:
                    data = await asyncio.wait_for(ws.recv(), 1.0)
                except TimeoutError:
                    break
                except ConnectionClosed:  # the relay hung up (cleanly or not)
                    closed = True
                    break
                received.append(msgpack.unpackb(data, raw=False))
        except ConnectionClosed:  # hung up while we were still sending
            closed = True
        finally:
            # The client library may trip over a transport the relay already dropped.
            with suppress(Exception):
                await ws.close()
    return received, closed


async def closed_with(ws: ClientConnection, timeout: float = 30.0) -> tuple[int | None, str]:
    """Read until the other end closes the connection; its close code and reason."""
    async with asyncio.timeout(timeout):
        try:
            while True:
                await ws.recv()
        except ConnectionClosed as exc:
            return (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (None, "")


def hello(store: str, device: str) -> bytes:
    packed: bytes = msgpack.packb({"t": "hello", "v": PROTOCOL_VERSION, "store": store,
                                   "device": device, "nonce": os.urandom(32),
                                   "receipts_after": 0, "doc_empty": False}, use_bin_type=True)
    return packed


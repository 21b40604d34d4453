"""The persisted baseline of the LAN benchmark: pycrdt-websocket, a process per client.

``pycrdt_persisted`` starts a ``WebsocketServer`` (room ``/bench``, no server-side store)
in a process of its own and 1 editor + N receivers, each a pycrdt ``Doc`` synced by a
``pycrdt.Provider`` in a process of its own.  Every client stores every update its
document sees (its own edits and those from the server) durably before anything else:
one insert and commit in SQLite, WAL, ``synchronous=FULL``, the way a till stores a
document change (pycrdt-store's ``SQLiteYStore`` would do the same with a rollback
journal, which costs more fsyncs per commit, through a thread: the plain insert is the
cheaper durable store, so the baseline is not made slower than it needs to be).

Each client prints a JSON line ``{"t", "price"}`` after storing an update that set the
price (``t``: wall clock just after the commit); the editor sets the price when the
driver writes ``edit N`` to its standard input.  Delay of one edit to one receiver: its
line's ``t`` minus the editor's (the editor has stored its edit; the update leaves it).
Bytes: WebSocket payloads both ways on every client link, as in the in-process set-up.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from tillsync.tools.bench_relay.procs import ended
from tillsync.tools.workload import percentile

ROOM = "/bench"


def _emit(line: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


# -- inside each process ---------------------------------------------------------------


async def _serve() -> None:
    from pycrdt.websocket import WebsocketServer
    from websockets.asyncio.server import ServerConnection, serve

    from tillsync.tools.lan_baseline import _Channel

    async with WebsocketServer(auto_clean_rooms=False) as wss:
        async def handler(conn: ServerConnection) -> None:
            await wss.serve(_Channel(conn, ROOM))

        async with serve(handler, "127.0.0.1", 0) as server:
            _emit({"port": server.sockets[0].getsockname()[1]})
            await _stdin_closed()


async def _stdin_lines() -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def _stdin_closed() -> None:
    reader = await _stdin_lines()
    while await reader.readline():
        pass


async def _client(url: str, db_path: str) -> None:
    from pycrdt import Doc, Map, MapEvent, Provider, TransactionEvent
    from websockets.asyncio.client import connect

    from tillsync.tools.lan_baseline import _Channel

    db = sqlite3.connect(db_path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE IF NOT EXISTS updates (id INTEGER PRIMARY KEY, data BLOB NOT NULL)")
    doc: Doc[Map[Any]] = Doc()
    prices = doc.get("products", type=Map)
    changed: list[float] = []

    def on_price(event: MapEvent) -> None:  # fires before the doc's observer, same update
        change = event.keys.get("price")
        if change is not None and "newValue" in change:
            changed.append(change["newValue"])

    def on_update(event: TransactionEvent) -> None:
        db.execute("BEGIN")
        db.execute("INSERT INTO updates (data) VALUES (?)", (event.update,))
        db.execute("COMMIT")
        if changed:
            _emit({"t": time.time(), "price": int(changed[-1])})
            changed.clear()

    # Keep the subscriptions: pycrdt drops an observer along with its Python wrapper.
    subs = (prices.observe(on_price), doc.observe(on_update))
    async with connect(url) as ws:
        channel = _Channel(ws, ROOM)
        async with Provider(doc, channel) as provider:
            async with asyncio.timeout(30):
                await provider.synced.wait()
            _emit({"ready": True})
            reader = await _stdin_lines()
            while line := (await reader.readline()).decode().split():
                if line[0] == "edit":
                    prices["price"] = int(line[1])
                elif line[0] == "bytes":
                    _emit({"bytes": channel.bytes_in + channel.bytes_out})
    del subs
    db.close()


def node_main(argv: list[str]) -> None:
    """``server`` or ``client URL DB``: one process of the set-up."""
    if argv[0] == "server":
        asyncio.run(_serve())
    else:
        asyncio.run(_client(argv[1], argv[2]))


# -- the driver ------------------------------------------------------------------------


class _Proc:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, *args: str) -> _Proc:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tillsync.tools.lan_baseline", *args,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        return cls(proc)

    async def line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        raw = await self.proc.stdout.readline()
        if not raw:
            raise RuntimeError("a baseline process exited early")
        answer: dict[str, Any] = json.loads(raw)
        return answer

    async def until(self, check: Any) -> dict[str, Any]:
        while not check(line := await self.line()):
            pass
        return line

    def tell(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")

    async def stop(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()
        await ended(self.proc, 10)


async def pycrdt_persisted(edits: int, receivers: int = 4, pause: float = 0.0
                           ) -> dict[str, object]:
    """Delay of one Map edit from an editor to ``receivers`` clients via pycrdt-websocket,
    a process per client (and one for the server), each client persisting every update."""
    try:
        import pycrdt.websocket  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(
            f"pycrdt-websocket is not installed ({exc}): pip install pycrdt-websocket"
        ) from exc
    delays: list[float] = []
    procs: list[_Proc] = []
    with tempfile.TemporaryDirectory(prefix="tillsync-pycrdt-") as root:
        try:
            server = await _Proc.start("server")
            procs.append(server)
            async with asyncio.timeout(30):
                port = (await server.line())["port"]
                clients: list[_Proc] = []
                for i in range(receivers + 1):
                    # One at a time: clients joining a room at once sometimes never get
                    # the server's answer to their first sync message.
                    clients.append(await _Proc.start("client", f"ws://127.0.0.1:{port}{ROOM}",
                                                     str(Path(root) / f"client{i}.db")))
                    procs.append(clients[-1])
                    await clients[-1].until(lambda line: line.get("ready"))
            editor, others = clients[0], clients[1:]
            on_links = await _link_bytes(clients)
            for i in range(edits):
                price = 1000 + i
                editor.tell(f"edit {price}")
                async with asyncio.timeout(30):
                    sent = await editor.until(lambda line, p=price: line.get("price") == p)
                    for other in others:
                        got = await other.until(lambda line, p=price: line.get("price") == p)
                        delays.append((got["t"] - sent["t"]) * 1000)
                if pause:
                    await asyncio.sleep(pause)
            await asyncio.sleep(0.2)  # the echoes of the last edit
            on_links = await _link_bytes(clients) - on_links
        finally:
            for proc in reversed(procs):
                await proc.stop()
    ordered = sorted(delays)
    return {
        "latencies_ms": delays, "edits": edits, "receivers": receivers, "samples": len(delays),
        **{f"p{p}_ms": round(percentile(ordered, p), 3) for p in (50, 95, 99)},
        "max_ms": round(ordered[-1], 3),
        "link_bytes_per_edit": round(on_links / edits, 1),
        "version": metadata.version("pycrdt-websocket"),
        "pycrdt_version": metadata.version("pycrdt"),
        "setup": f"server and {receivers + 1} clients each in a process of its own, every "
                 "client persisting every update (SQLite WAL, synchronous=FULL, a commit "
                 "per update; websockets transport, loopback)",
    }


async def _link_bytes(clients: list[_Proc]) -> int:
    """Payload bytes both ways on every client link so far."""
    total = 0
    for client in clients:
        client.tell("bytes")
    async with asyncio.timeout(30):
        for client in clients:
            total += (await client.until(lambda line: "bytes" in line))["bytes"]
    return total

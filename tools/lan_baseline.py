"""Baselines for the LAN propagation benchmark: ``python -m tillsync.tools.lan_baseline``.

pycrdt-websocket (Yjs sync protocol): a ``WebsocketServer`` room on 127.0.0.1, 1 editor
and N receivers (a pycrdt ``Doc`` each, synced by a ``pycrdt.Provider``).  The editor sets
an integer in a Map (a price), one edit at a time.  Two set-ups:

- **in-process, no persistence** (``pycrdt_propagation``): server and every client in one
  process on one event loop; delay from just before the edit to each receiver's Map
  observer firing.  The floor of the sync protocol itself.
- **a process per client, each persisting** (``pycrdt_persisted``; ``tools.lan_baseline_procs``):
  the server in a process of its own and each client in its own, every client storing
  every update it sees (its own edits too) in SQLite, WAL, ``synchronous=FULL``, one
  insert and commit per update, as a till stores its document changes; delay from the
  editor having stored its edit (the update then leaves it) to each receiver having
  stored it, wall clock across processes.  The set-up tillsync's figure is measured in.

Transport: ``websockets`` (a tillsync dependency, so both benchmarks use the same WebSocket
library) behind a small ``Channel`` adapter, server and clients alike.  The docs show
Hypercorn + httpx-ws, pure-Python (wsproto) stacks whose cost is not the sync protocol's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from importlib import metadata
from typing import Any

from tillsync.tools.workload import percentile, positive_int


class _Channel:
    """pycrdt ``Channel`` over a ``websockets`` connection, counting payload bytes."""

    def __init__(self, ws: Any, path: str) -> None:
        self._ws, self._path = ws, path
        self.bytes_out = self.bytes_in = 0

    @property
    def path(self) -> str:
        return self._path

    def __aiter__(self) -> _Channel:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.recv()
        except Exception:  # closed
            raise StopAsyncIteration from None

    async def send(self, message: bytes) -> None:
        self.bytes_out += len(message)
        await self._ws.send(message)

    async def recv(self) -> bytes:
        message = await self._ws.recv()
        data = message.encode() if isinstance(message, str) else bytes(message)
        self.bytes_in += len(data)
        return data


async def pycrdt_propagation(edits: int, receivers: int = 4, pause: float = 0.0
                             ) -> dict[str, object]:
    """Delay of one Map edit from an editor to ``receivers`` clients via pycrdt-websocket."""
    try:
        from pycrdt import Doc, Map, MapEvent, Provider
        from pycrdt.websocket import WebsocketServer
        from websockets.asyncio.client import connect
        from websockets.asyncio.server import ServerConnection, serve
    except ImportError as exc:
        raise RuntimeError(
            f"pycrdt-websocket is not installed ({exc}): pip install pycrdt-websocket"
        ) from exc

    room, all_arrived, expected = "/bench", asyncio.Event(), [-1.0]
    delays, arrived = list[float](), list[float]()

    def on_change(event: MapEvent) -> None:
        change = event.keys.get("price")
        if change is not None and change.get("newValue") == expected[0]:
            arrived.append(time.perf_counter())
            if len(arrived) == receivers:
                all_arrived.set()

    async with contextlib.AsyncExitStack() as stack:
        wss = await stack.enter_async_context(WebsocketServer(auto_clean_rooms=False))

        async def handler(conn: ServerConnection) -> None:
            await wss.serve(_Channel(conn, room))

        server = await stack.enter_async_context(serve(handler, "127.0.0.1", 0))
        port = server.sockets[0].getsockname()[1]
        docs: list[Doc[Map[Any]]] = []
        channels, providers = [], []
        for _ in range(receivers + 1):
            ws = await stack.enter_async_context(connect(f"ws://127.0.0.1:{port}{room}"))
            docs.append(Doc())
            channels.append(_Channel(ws, room))
            providers.append(await stack.enter_async_context(Provider(docs[-1], channels[-1])))
        async with asyncio.timeout(30):
            for provider in providers:
                await provider.synced.wait()
        # Keep the Map objects: pycrdt drops an observer along with its Python wrapper.
        maps = [doc.get("products", type=Map) for doc in docs]
        for ymap in maps[1:]:
            ymap.observe(on_change)

        update_bytes, sent = 0, channels[0].bytes_out
        on_links = sum(c.bytes_out + c.bytes_in for c in channels)
        for i in range(edits):
            arrived.clear()
            all_arrived.clear()
            expected[0] = float(1000 + i)  # pycrdt stores numbers as JS doubles
            before = docs[0].get_state()
            t0 = time.perf_counter()
            maps[0]["price"] = 1000 + i
            update_bytes += len(docs[0].get_update(before))
            async with asyncio.timeout(30):
                await all_arrived.wait()
            delays.extend((t - t0) * 1000 for t in arrived)
            if pause:
                await asyncio.sleep(pause)
        await asyncio.sleep(0.2)  # the echoes of the last edit (see below)
        sent = channels[0].bytes_out - sent
        on_links = sum(c.bytes_out + c.bytes_in for c in channels) - on_links

    ordered = sorted(delays)
    return {
        "latencies_ms": delays, "edits": edits, "receivers": receivers, "samples": len(delays),
        **{f"p{p}_ms": round(percentile(ordered, p), 3) for p in (50, 95, 99)},
        "max_ms": round(ordered[-1], 3),
        # The sync-protocol message the editor sends per edit (WebSocket framing excluded).
        "bytes_per_edit": round(sent / edits, 1),
        # The bare Yjs update: len(doc.get_update(state before the edit)).
        "update_bytes_per_edit": round(update_bytes / edits, 1),
        # Both ways on all client links: editor -> server, server -> every client (editor
        # too), and each receiver's Provider sending the applied update back to the server.
        "link_bytes_per_edit": round(on_links / edits, 1),
        "version": metadata.version("pycrdt-websocket"),
        "pycrdt_version": metadata.version("pycrdt"),
        "setup": f"one process: server and {receivers + 1} clients on one event loop "
                 "(websockets transport, loopback, no persistence)",
    }


def main(argv: list[str] | None = None) -> None:
    from tillsync.tools.lan_baseline_procs import node_main, pycrdt_persisted

    if argv is None:
        import sys

        argv = sys.argv[1:]
    if argv[:1] in (["server"], ["client"]):  # (internal) one process of the persisted set-up
        node_main(argv)
        return
    ap = argparse.ArgumentParser(prog="python -m tillsync.tools.lan_baseline", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--edits", type=positive_int, default=200, help="edits (default 200)")
    ap.add_argument("--receivers", type=positive_int, default=4, help="receivers (default 4)")
    ap.add_argument("--pause", type=float, default=0.0, metavar="MS",
                    help="wait this long after an edit reached every client (default 0)")
    ap.add_argument("--persisted", action="store_true",
                    help="the set-up with a process per client, each persisting every update "
                         "(default: one process, no persistence)")
    args = ap.parse_args(argv)
    run = pycrdt_persisted if args.persisted else pycrdt_propagation
    result = asyncio.run(run(args.edits, args.receivers, args.pause / 1000))
    print(json.dumps({k: v for k, v in result.items() if k != "latencies_ms"}, indent=2))


if __name__ == "__main__":
    main()

"""Benchmark of idle device connections: ``python -m tillsync.tools.bench_connections``.

1. tillsync: a real relay (``relay serve``, its own process) and ``--devices`` + 1
   devices of one store, each enrolled over the wire with a one-time code and a key of
   its own (through a relay process stopped before the measured one starts, so that it
   never held the enrollments' connections).  One device logs in first (the store's
   first login loads its state once); then the other ``--devices`` log in at once,
   ``--concurrency`` handshakes in flight at a time (hello, challenge, auth, welcome:
   both signatures checked), and stay connected, idle.
2. baseline (same run): pycrdt-websocket's ``WebsocketServer`` (its own process, the
   same ``websockets`` library, one room) and as many clients, each a pycrdt ``Doc``
   whose ``Provider`` has finished the first sync; one first, then the rest.

Figures: wall time to open all, the server's CPU for it, and the server's RSS growth
per idle connection (VmRSS after the connections settled, minus before, over their
number).  Checked as RSS is read: every connection (the first one too) still open on
the client's side and, for tillsync, counted by the relay as connected and authenticated
(``tillsync_relay_connected_devices`` of its ``/metrics``); the exit status is 1 if one
is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection, connect
from websockets.protocol import State

from tillsync.peer.identity import DeviceKey
from tillsync.peer.sync.engine import ClientLink, Enrolled, LinkFailed, Ready, RemoteError
from tillsync.peer.sync.frames import TRANSPORT_MAX
from tillsync.relay.server import Relay
from tillsync.tools.bench_relay import Server, process_cpu
from tillsync.tools.workload import machine, positive_int, progress

STORE = "bench-shop"
SETTLE = 1.0  # seconds to wait after the last connection opened, before reading RSS


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


async def handshake(ws: ClientConnection, link: ClientLink) -> Ready | Enrolled:
    """Run ``link``'s handshake on ``ws`` until it is ready (or enrolled)."""
    for out in link.data_to_send():
        await ws.send(out)
    while True:
        link.receive_data(await ws.recv())
        for event in link.events_received():
            if isinstance(event, Ready | Enrolled):
                for out in link.data_to_send():
                    await ws.send(out)
                return event
            if isinstance(event, RemoteError | LinkFailed):
                raise RuntimeError(f"relay error {event.code}: {event.message}")
        for out in link.data_to_send():
            await ws.send(out)


async def enroll(url: str, code: str, index: int, store: str = STORE
                 ) -> tuple[str, DeviceKey, bytes]:
    """A new device of ``store`` enrolled with ``code``: its id, key and the relay's key."""
    key, device = DeviceKey.generate(), f"bench-device-{index:05d}"
    link = ClientLink(store=store, device=device, key=key, nonce=os.urandom(32))
    link.start_enroll(code, f"Till {index}")
    async with connect(url, max_size=TRANSPORT_MAX, compression=None) as ws:
        event = await handshake(ws, link)
    assert isinstance(event, Enrolled)
    return device, key, event.relay_key


async def _bounded(concurrency: int, jobs: Sequence[Callable[[], Awaitable[Any]]]
                   ) -> list[Any]:
    gate = asyncio.Semaphore(concurrency)

    async def one(job: Callable[[], Awaitable[Any]]) -> Any:
        async with gate:
            return await job()

    return await asyncio.gather(*(one(job) for job in jobs))


class Idle:
    """Connections each held open by a task of its own (pycrdt's ``Provider`` must be
    left in the task that entered it) until ``close``."""

    def __init__(self) -> None:
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._held: list[ClientConnection] = []

    async def open(self, setup: Callable[[contextlib.AsyncExitStack],
                                         Awaitable[ClientConnection]]) -> None:
        """Run ``setup`` (which enters the connection's contexts and returns the
        connection) in a new task that then holds them until ``close``; returns once it
        has run."""
        ready = asyncio.get_running_loop().create_future()

        async def keep() -> None:
            try:
                async with contextlib.AsyncExitStack() as stack:
                    self._held.append(await setup(stack))
                    ready.set_result(None)
                    await self._stop.wait()
            except Exception as exc:
                if not ready.done():
                    ready.set_exception(exc)

        self._tasks.append(asyncio.create_task(keep()))
        await ready

    def still_open(self) -> int:
        """How many of the connections set up are open now."""
        return sum(ws.state is State.OPEN for ws in self._held)

    async def close(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def _drain(ws: ClientConnection) -> None:
    with contextlib.suppress(Exception):
        async for _ in ws:
            pass


async def measure(pid: int, idle: Idle, warm: Callable[[], Awaitable[None]],
                  jobs: Sequence[Callable[[], Awaitable[None]]], concurrency: int
                  ) -> dict[str, Any]:
    """Open one connection, then all of ``jobs`` (each held by ``idle``); time, server
    CPU, RSS growth, and how many connections are open when RSS is read."""
    await warm()
    await asyncio.sleep(SETTLE)
    rss0, cpu0 = rss_kib(pid), process_cpu(pid)
    t0 = time.perf_counter()
    await _bounded(concurrency, jobs)
    wall = time.perf_counter() - t0
    cpu1 = process_cpu(pid)
    await asyncio.sleep(SETTLE)
    rss1 = rss_kib(pid)
    still_open = idle.still_open()
    main, threads = cpu1["main"] - cpu0["main"], cpu1["threads"] - cpu0["threads"]
    cpu = main + threads
    n = len(jobs)
    return {"connections": n, "open_s": round(wall, 3),
            "server_cpu_s": round(cpu, 3),
            "server_cpu_ms_per_connection": round(cpu / n * 1e3, 3),
            "server_cpu_event_loop_s": round(main, 3),
            "server_cpu_other_threads_s": round(threads, 3),
            "rss_before_kib": rss0, "rss_after_kib": rss1,
            "rss_kib_per_connection": round((rss1 - rss0) / n, 2),
            "open_at_rss_read": still_open}  # the first connection too: n + 1


def connected_devices(port: int) -> float:
    """The relay's count of connected, authenticated devices, from its ``/metrics``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
        text = answer.read().decode()
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples
               if sample.name == "tillsync_relay_connected_devices")


async def tillsync_side(root: Path, devices: int, concurrency: int) -> dict[str, Any]:
    data = root / "relay"
    relay = await Relay.open(data)
    try:
        codes = [await relay.new_code(STORE, f"Till {i}") for i in range(devices + 1)]
    finally:
        await relay.close()
    command = [sys.executable, "-m", "tillsync.tools.cli", "relay", "serve",
               "--data", str(data), "--host", "127.0.0.1", "--port", "0"]
    # Enrolled through a relay process of their own: the measured one must not hold (or
    # free during the measurement, and reuse) the memory of 1,001 enrollment connections.
    server = await Server.start(command, root / "enroll.log")
    try:
        progress(f"tillsync: enrolling {devices + 1} devices")
        enrolled = await _bounded(concurrency, [
            functools.partial(enroll, f"ws://127.0.0.1:{server.port}", c, i)
            for i, c in enumerate(codes)])
    finally:
        await server.stop()
    server = await Server.start(command, root / "relay.log")
    url = f"ws://127.0.0.1:{server.port}"
    idle = Idle()
    try:

        async def login(device: str, key: DeviceKey, relay_key: bytes) -> None:
            async def setup(stack: contextlib.AsyncExitStack) -> ClientConnection:
                link = ClientLink(store=STORE, device=device, key=key, nonce=os.urandom(32),
                                  relay_key=relay_key)
                link.start()
                ws = await stack.enter_async_context(
                    connect(url, max_size=TRANSPORT_MAX, compression=None))
                if not isinstance(await handshake(ws, link), Ready):
                    raise RuntimeError(f"{device}: the relay did not welcome it")
                reader = asyncio.create_task(_drain(ws))  # what the relay sends, dropped
                stack.callback(reader.cancel)
                return ws

            await idle.open(setup)

        progress(f"tillsync: {devices} devices log in and stay idle")
        first, rest = enrolled[0], enrolled[1:]
        result = await measure(server.proc.pid, idle, lambda: login(*first),
                               [functools.partial(login, *d) for d in rest], concurrency)
        result["relay_connected_devices"] = round(
            await asyncio.to_thread(connected_devices, server.port))
    finally:
        await idle.close()
        await server.stop()
    return result


PYCRDT_SERVER = """
import asyncio, sys
from pycrdt.websocket import WebsocketServer
from websockets.asyncio.server import serve
from tillsync.tools.lan_baseline import _Channel

async def main():
    async with WebsocketServer(auto_clean_rooms=False) as wss:
        async def handler(conn):
            await wss.serve(_Channel(conn, "/bench"))
        async with serve(handler, "127.0.0.1", 0, compression=None) as server:
            port = server.sockets[0].getsockname()[1]
            print(f"listening on ws://127.0.0.1:{port}", flush=True)
            await asyncio.Future()

asyncio.run(main())
"""


async def pycrdt_side(root: Path, clients: int, concurrency: int) -> dict[str, Any]:
    try:
        from pycrdt import Doc, Provider
    except ImportError as exc:
        return {"skipped": f"pycrdt-websocket is not installed ({exc})"}
    from importlib import metadata

    from tillsync.tools.lan_baseline import _Channel

    root.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before anything runs
    server = await Server.start([sys.executable, "-c", PYCRDT_SERVER], root / "pycrdt.log")
    url = f"ws://127.0.0.1:{server.port}/bench"
    idle = Idle()
    try:
        async def setup(stack: contextlib.AsyncExitStack) -> ClientConnection:
            ws = await stack.enter_async_context(connect(url, compression=None))
            provider = await stack.enter_async_context(Provider(Doc(), _Channel(ws, "/bench")))
            await provider.synced.wait()
            return ws

        async def join() -> None:
            await idle.open(setup)

        progress(f"pycrdt-websocket: {clients} clients join one room")
        result = await measure(server.proc.pid, idle, join, [join] * clients, concurrency)
    finally:
        await idle.close()
        await server.stop()
    result["version"] = metadata.version("pycrdt-websocket")
    return result


async def bench(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    report: dict[str, Any] = {"machine": machine(), "args": vars(args)}
    for round_ in range(args.rounds):  # interleaved: tillsync, pycrdt, tillsync, ...
        report.setdefault("tillsync", []).append(
            await tillsync_side(root / f"t{round_}", args.devices, args.concurrency))
        report.setdefault("baseline", []).append(
            await pycrdt_side(root / f"b{round_}", args.devices, args.concurrency))
    return report


def render(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [f"machine: {m.get('cpu')}, {m.get('cores')} cores, Python {m.get('python')}"]
    for t, b in zip(report["tillsync"], report["baseline"], strict=True):
        lines.append(
            f"tillsync relay    {t['connections']} authenticated connections opened in "
            f"{t['open_s']:.2f} s (relay CPU {t['server_cpu_ms_per_connection']:.2f} ms "
            f"each); idle RSS {t['rss_kib_per_connection']:.1f} KiB each; "
            f"{t['open_at_rss_read']} open then, {t['relay_connected_devices']} connected "
            "for the relay (the first one too)")
        if "skipped" in b:
            lines.append(f"pycrdt-websocket  not run: {b['skipped']}")
            continue
        lines.append(
            f"pycrdt-websocket  {b['connections']} synced clients in one room opened in "
            f"{b['open_s']:.2f} s (server CPU {b['server_cpu_ms_per_connection']:.2f} ms "
            f"each); idle RSS {b['rss_kib_per_connection']:.1f} KiB each "
            f"(version {b['version']})")
        lines.append(f"  ratio: open time {t['open_s'] / b['open_s']:.2f}x pycrdt's")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tillsync.tools.bench_connections",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=positive_int, default=1000,
                    help="connections to open (default 1000)")
    ap.add_argument("--concurrency", type=positive_int, default=50,
                    help="handshakes in flight at a time (default 50)")
    ap.add_argument("--rounds", type=positive_int, default=1,
                    help="interleaved rounds of both sides (default 1)")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="tillsync-conn-"))
    try:
        report = asyncio.run(bench(args, root))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0 if held_all(report, args.devices) else 1


def held_all(report: dict[str, Any], devices: int) -> bool:
    """Every connection of every round was open when RSS was read and, on the relay,
    connected and authenticated (``devices`` and the first one)."""
    sides = [*report["tillsync"], *(b for b in report["baseline"] if "skipped" not in b)]
    return all(side["open_at_rss_read"] == devices + 1 for side in sides) and all(
        t["relay_connected_devices"] == devices + 1 for t in report["tillsync"])


if __name__ == "__main__":
    sys.exit(main())

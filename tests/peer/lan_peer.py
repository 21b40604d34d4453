"""A LAN peer played by the test: ``PeerLink`` over a websocket, frame by frame.

``PeerClient`` dials a till's daemon the way another till would, or sends whatever a
misbehaving one would (garbage, forged entries, half a frame before vanishing).
``FakeTill`` listens for a daemon that dials it and answers with frames the test makes,
in a thread of its own so the test can start daemons (blocking) meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import struct
import threading
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import msgpack
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from tests.relay.processes import in_thread
from tillsync.peer.identity import DeviceKey
from tillsync.peer.store import Till
from tillsync.peer.sync.engine import Event, PeerLink, RemoteError
from tillsync.peer.sync.frames import TRANSPORT_MAX


@dataclass(frozen=True)
class Identity:
    """What a till needs to open a LAN link: its store, certificate and key, and the
    relay key that checks certificates."""

    store: str
    device: str
    cert: bytes
    key: DeviceKey
    issuer: bytes


def identity_of(path: Path) -> Identity:
    """The identity of an enrolled till directory (read-only: a daemon may hold it)."""
    async def read() -> Identity:
        async with await Till.open(path, readonly=True) as till:
            assert till.cert is not None and till.relay_key is not None, "not enrolled"
            return Identity(till.store_id, till.device_id, till.cert, DeviceKey.read(path),
                            till.relay_key)
    return in_thread(read)


class PeerClient:
    """The dialing end of a LAN link, driven by the test."""

    def __init__(self, ws: ClientConnection, link: PeerLink) -> None:
        self.ws, self.link = ws, link
        self.events: list[Event] = []
        self.closed = False

    @classmethod
    async def dial(cls, url: str, who: Identity, *, timeout: float = 10.0) -> PeerClient:
        """Connect and send ``peer_hello``; the handshake goes on as frames are read."""
        ws = await asyncio.wait_for(connect(url, max_size=TRANSPORT_MAX, compression=None),
                                    timeout)
        link = PeerLink(store=who.store, cert=who.cert, key=who.key, issuer=who.issuer,
                        nonce=os.urandom(32), dialer=True)
        client = cls(ws, link)
        link.start()
        await client.flush()
        return client

    @classmethod
    async def raw(cls, url: str, who: Identity, *, timeout: float = 10.0) -> PeerClient:
        """Connect without sending anything: the test sends frames by hand."""
        ws = await asyncio.wait_for(connect(url, max_size=TRANSPORT_MAX, compression=None),
                                    timeout)
        return cls(ws, PeerLink(store=who.store, cert=who.cert, key=who.key,
                                issuer=who.issuer, nonce=os.urandom(32), dialer=True))

    async def flush(self) -> None:
        for frame in self.link.data_to_send():
            await self.ws.send(frame)

    async def send(self, frame: bytes | str) -> None:
        await self.ws.send(frame)

    async def next_events(self) -> list[Event]:
        try:
            frame = await self.ws.recv()
        except ConnectionClosed:
            self.closed = True
            return []
        self.link.receive_data(frame)
        events = self.link.events_received()
        self.events += events
        with suppress(ConnectionClosed):
            await self.flush()
        return events

    async def wait_for(self, wanted: Callable[[Event], bool], timeout: float = 15.0) -> Event:
        """Read until an event ``wanted`` accepts; fail on a remote error or a close."""
        async with asyncio.timeout(timeout):
            while True:
                for event in await self.next_events():
                    if wanted(event):
                        return event
                    if isinstance(event, RemoteError):
                        raise AssertionError(f"the daemon sent an error: {event}")
                if self.closed:
                    raise AssertionError(f"the daemon closed the link; events: {self.events}")

    async def until_closed(self, timeout: float = 15.0) -> list[Event]:
        """Read until the daemon closes the connection; every event on the way."""
        async with asyncio.timeout(timeout):
            while not self.closed:
                await self.next_events()
        return self.events

    def errors(self) -> list[tuple[str, bool]]:
        return [(e.code, e.fatal) for e in self.events if isinstance(e, RemoteError)]

    def vanish(self, partial: bytes = b"") -> None:
        """Write ``partial`` (e.g. half a frame) straight to the socket and drop the
        connection at once, with no closing handshake: a till unplugged mid-send."""
        transport = self.ws.transport
        if partial:
            transport.write(partial)
        transport.abort()
        self.closed = True

    async def close(self) -> None:
        with suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 5)


def masked_frame(payload: bytes) -> bytes:
    """A complete binary websocket frame as a client sends it (RFC 6455, masked)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x82, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x82, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x82, 0x80 | 127, n)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + body


def decode_frame(data: bytes | str) -> dict[str, Any]:
    assert isinstance(data, bytes), data
    return dict(msgpack.unpackb(data, raw=False))


class FakeTill:
    """A websocket listener on loopback, in its own thread, that a daemon can dial.

    ``answer`` gets each decoded frame and returns the frames to send back.  Every
    connection's received frames are kept in ``connections``."""

    def __init__(self, answer: Callable[[dict[str, Any]], list[bytes]]) -> None:
        self.answer = answer
        self.connections: list[list[dict[str, Any]]] = []
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    async def _handle(self, ws: ServerConnection) -> None:
        frames: list[dict[str, Any]] = []
        self.connections.append(frames)
        with suppress(ConnectionClosed):
            async for data in ws:
                message = decode_frame(data)
                frames.append(message)
                for out in self.answer(message):
                    await ws.send(out)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve(self._handle, "127.0.0.1", 0, compression=None) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> FakeTill:
        self._thread.start()
        assert self._ready.wait(10), "the fake till did not start"
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

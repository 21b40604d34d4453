"""automerge-repo clients at a till: the websocket endpoint of ``peer run``'s HTTP API.

``GET /automerge?token=TOKEN`` (or ``Authorization: Bearer TOKEN``) upgrades to
automerge-repo's websocket protocol (``peer.amrepo.protocol``) for the store's master
document; the token is the till API's own (``peer.http.auth``).  A browser's WebSocket
cannot send headers, hence the query parameter.  ``GET /api/automerge`` tells a front end
the document's id and URL.

Each client's sync messages are checked (``peer.amrepo.checks``) and applied inside the
till's writer, so what a client writes is stored like any other document change, and
the LAN links and the relay rounds carry it on.  Whatever the till stores (its own
edits, a LAN peer's, the relay's) reaches every connected client: one task per
connection generates its sync messages whenever the store commits.

A connection is under the same kind of limits as the relay's (``ClientLimits``, set by
``peer run --automerge-handshake-timeout`` and ``--automerge-idle-timeout``): its
``join`` must come within the handshake timeout (close code 4001), and once joined, a
connection on which no frame passed either way for the idle timeout is closed (4002).
The 30 s websocket heartbeat does not count as a frame: it shows the connection is
alive, not that it is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass
from functools import partial

import automerge.core as am
from aiohttp import WSMsgType, web

from tillsync.peer.amrepo.checks import check_sync
from tillsync.peer.amrepo.protocol import (
    MAX_FRAME,
    PATH,
    Joined,
    RepoSession,
    SyncReceived,
    document_id,
)
from tillsync.peer.errors import InvalidInput
from tillsync.peer.http.auth import Gate
from tillsync.peer.http.context import context
from tillsync.peer.http.errors import ApiError
from tillsync.peer.store import Till
from tillsync.peer.sync.deadlines import HANDSHAKE_TIMEOUT, IDLE_TIMEOUT, Activity, watch_link

log = logging.getLogger("tillsync.amrepo")



@dataclass(frozen=True)
class ClientLimits:
    handshake_timeout: float = HANDSHAKE_TIMEOUT  # seconds from opening to ``join``
    idle_timeout: float = IDLE_TIMEOUT  # seconds without a frame either way, once joined


DEFAULT_LIMITS = ClientLimits()
GATE: web.AppKey[Gate] = web.AppKey("amrepo-gate", Gate)
LIMITS: web.AppKey[ClientLimits] = web.AppKey("amrepo-limits", ClientLimits)


def add_routes(app: web.Application, gate: Gate, limits: ClientLimits = DEFAULT_LIMITS
               ) -> None:
    app[GATE] = gate
    app[LIMITS] = limits
    app.router.add_get(PATH, endpoint)
    app.router.add_get("/api/automerge", describe)


def token_of(request: web.Request) -> str:
    """The token of a websocket request: ``?token=`` or ``Authorization: Bearer``."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.query.get("token", "").strip()


async def describe(request: web.Request) -> web.Response:
    """The store's automerge-repo document: its id, its URL, where to connect."""
    store = context(request).till.store_id
    doc = document_id(store)
    return web.json_response({"document_id": doc, "url": f"automerge:{doc}",
                              "path": PATH, "store_id": store})


async def endpoint(request: web.Request) -> web.StreamResponse:
    token = token_of(request)
    if not token:
        raise ApiError(401, "unauthorized", f"connect to {PATH}?token=TOKEN with the "
                       "till's API token (`tillsync peer token DIR`)")
    if request.app[GATE].who(token, request.remote) is None:
        raise ApiError(401, "unauthorized", "this token is not valid here (revoked, "
                       "mistyped, or the owner's token used from another machine)")
    ws = web.WebSocketResponse(max_msg_size=MAX_FRAME, heartbeat=30.0, compress=False)
    await ws.prepare(request)
    await Connection(context(request).till, ws, request.remote or "?",
                     request.app[LIMITS]).run()
    return ws


class _Closer:
    """``ws.close`` as the deadlines call it (``peer.sync.deadlines.Closable``)."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.closing = False

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closing = True
        await self.ws.close(code=code, message=reason.encode())


class Connection:
    """One automerge-repo client of this till."""

    def __init__(self, till: Till, ws: web.WebSocketResponse, remote: str,
                 limits: ClientLimits) -> None:
        self.till, self.ws, self.remote, self.limits = till, ws, remote, limits
        self.session = RepoSession(f"tillsync-{till.device_id}-{os.urandom(4).hex()}",
                                   till.store_id)
        self.sync = am.SyncState()
        self.wake = asyncio.Event()
        self.activity = Activity()
        self.sending = self.activity.sending  # each frame sent counts as use
        self.joined = asyncio.Event()

    async def run(self) -> None:
        tasks: list[asyncio.Task[None]] = []
        closer = _Closer(self.ws)
        deadlines = asyncio.create_task(watch_link(
            closer, self.joined, self.activity, peer=f"automerge-repo client {self.remote}",
            handshake_timeout=self.limits.handshake_timeout,
            idle_timeout=self.limits.idle_timeout))
        try:
            async for message in self.ws:
                self.activity.heard()
                if message.type == WSMsgType.BINARY:
                    events = self.session.receive(message.data)
                elif message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.ERROR):
                    break
                else:
                    events = []
                    self.session.refuse("frames are binary CBOR")
                for event in events:
                    if isinstance(event, Joined):
                        self.joined.set()
                    elif isinstance(event, SyncReceived):
                        await self._receive(event.data)
                        if not tasks:  # the client asked for the document: keep it current
                            tasks = [asyncio.create_task(self._pump()),
                                     asyncio.create_task(self._watch())]
                        self.wake.set()
                await self._flush()
                if self.session.closed:
                    break
        finally:
            if not closer.closing:  # else let it finish the closing handshake it began
                deadlines.cancel()
            for task in tasks:
                task.cancel()
            for task in [deadlines, *tasks]:
                with contextlib.suppress(asyncio.CancelledError, ConnectionResetError):
                    await task
            await self.ws.close()

    async def _receive(self, data: bytes) -> None:
        try:
            await self.till.receive_document(
                self.sync, message=data,
                check=partial(check_sync, role_of=self.till.role_of))
        except InvalidInput as exc:  # ``Refused`` too: nothing of the message was applied
            log.warning("automerge-repo client %s (%s): %s", self.session.client_peer,
                        self.remote, exc)
            self.session.refuse(str(exc))

    async def _flush(self) -> None:
        async with self.sending:
            for frame in self.session.data_to_send():
                await self.ws.send_bytes(frame)

    async def _watch(self) -> None:
        seen = self.till.version
        while True:
            seen = await self.till.wait_changed(seen)
            self.wake.set()

    async def _pump(self) -> None:
        """The only generator of this connection's sync messages (one SyncState)."""
        while not self.session.closed:
            await self.wake.wait()
            self.wake.clear()
            message = self.till.master.sync_message(self.sync)
            if message is not None:
                self.session.send_sync(message)
                await self._flush()

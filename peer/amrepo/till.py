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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from functools import partial

import automerge.core as am
from aiohttp import WSMsgType, web

from tillsync.peer.amrepo.checks import check_sync
from tillsync.peer.amrepo.protocol import MAX_FRAME, PATH, RepoSession, SyncReceived, document_id
from tillsync.peer.errors import InvalidInput
from tillsync.peer.http.auth import Gate
from tillsync.peer.http.context import context
from tillsync.peer.http.errors import ApiError
from tillsync.peer.store import Till

log = logging.getLogger("tillsync.amrepo")

GATE: web.AppKey[Gate] = web.AppKey("amrepo-gate", Gate)


def add_routes(app: web.Application, gate: Gate) -> None:
    app[GATE] = gate
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
    await Connection(context(request).till, ws, request.remote or "?").run()
    return ws


class Connection:
    """One automerge-repo client of this till."""

    def __init__(self, till: Till, ws: web.WebSocketResponse, remote: str) -> None:
        self.till, self.ws, self.remote = till, ws, remote
        self.session = RepoSession(f"tillsync-{till.device_id}-{os.urandom(4).hex()}",
                                   till.store_id)
        self.sync = am.SyncState()
        self.wake = asyncio.Event()
        self.sending = asyncio.Lock()

    async def run(self) -> None:
        tasks: list[asyncio.Task[None]] = []
        try:
            async for message in self.ws:
                if message.type == WSMsgType.BINARY:
                    events = self.session.receive(message.data)
                elif message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.ERROR):
                    break
                else:
                    events = []
                    self.session.refuse("frames are binary CBOR")
                for event in events:
                    if isinstance(event, SyncReceived):
                        await self._receive(event.data)
                        if not tasks:  # the client asked for the document: keep it current
                            tasks = [asyncio.create_task(self._pump()),
                                     asyncio.create_task(self._watch())]
                        self.wake.set()
                await self._flush()
                if self.session.closed:
                    break
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
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

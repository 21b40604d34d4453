"""automerge-repo clients at the relay: ``/automerge?token=TOKEN`` on the relay's port.

The token is one of the store's reporting tokens (`tillsync relay token`), sent as
``?token=`` (a browser's WebSocket cannot send headers) or ``Authorization: Bearer``; it
opens the store it belongs to and no other.  A client's sync messages get the till's
checks (``peer.amrepo.checks``, roles read from the store's enrolled devices) on a fork
of the store's hub document, under the hub's lock; what passes is merged, stored and
handed to every till at their next sync, and what the tills bring reaches the client
live, as the hub wakes each connection's pump.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import automerge.core as am
import websockets
from websockets.asyncio.server import ServerConnection

from tillsync.peer.amrepo.checks import check_sync
from tillsync.peer.amrepo.protocol import PATH, Joined, RepoSession, SyncReceived
from tillsync.peer.errors import InvalidInput
from tillsync.relay.documents import StoreHub, Wake
from tillsync.relay.http import store_of
from tillsync.relay.limits import LinkWatch
from tillsync.relay.storage import with_retries

if TYPE_CHECKING:
    from tillsync.relay.server import Relay

log = logging.getLogger("tillsync.relay")


def wanted(path: str) -> bool:
    return urlsplit(path).path == PATH


async def serve(relay: Relay, ws: ServerConnection, watch: LinkWatch) -> None:
    """One automerge-repo client (its token was checked before the websocket opened).

    The relay's connection limits (``relay.limits``, admitted by the caller) hold as for
    a device: the client's ``join`` must come within the handshake timeout (it is
    answered with ``peer`` at once), and a client that sends and is sent no frame for
    the idle timeout is closed (automerge-repo's adapter reconnects by itself)."""
    assert ws.request is not None
    store = await store_of(relay.storage, ws.request.path, ws.request.headers)
    if store is None:  # revoked between the handshake's check and now
        await ws.close(1008, "token refused")
        return
    hub = await relay.hubs.get(store)
    session = RepoSession(f"tillsync-relay-{os.urandom(4).hex()}", store)
    sync = am.SyncState()
    wake = Wake()
    pump: asyncio.Task[None] | None = None
    flush = partial(_flush, ws, session, watch.sending)  # each frame sent counts as use
    hub.watch(wake)
    try:
        async for frame in ws:
            watch.heard()
            if isinstance(frame, str):
                session.refuse("frames are binary CBOR")
            for event in session.receive(frame) if isinstance(frame, bytes) else []:
                if isinstance(event, Joined):
                    watch.logged_in()
                elif isinstance(event, SyncReceived):
                    await _receive(relay, hub, session, sync, event.data)
                    if pump is None:
                        pump = asyncio.create_task(_pump(hub, session, sync, wake, flush))
                    wake.set()
            await flush()
            if session.closed:
                break
    except websockets.ConnectionClosed:
        pass
    finally:
        hub.unwatch(wake)
        if pump is not None:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
                await pump
        await ws.close()


async def _receive(relay: Relay, hub: StoreHub, session: RepoSession, sync: am.SyncState,
                   data: bytes) -> None:
    roles = {d.device_id: d.role for d in await relay.storage.devices(hub.store)}
    async with hub.lock:
        try:
            check_sync(hub.doc, data, roles.get)  # on a fork: a refusal changes nothing
            chunks = hub.doc.receive_sync(sync, data)
        except InvalidInput as exc:
            log.warning("automerge-repo client %s of store %s: %s", session.client_peer,
                        hub.store, exc)
            session.refuse(str(exc))
            return
        await with_retries(relay.storage, "storing document changes",
                           lambda: relay.hubs.persist(hub, chunks))
    if chunks:
        hub.document_changed()


async def _flush(ws: ServerConnection, session: RepoSession, sending: asyncio.Lock) -> None:
    async with sending:
        for frame in session.data_to_send():
            await ws.send(frame)


async def _pump(hub: StoreHub, session: RepoSession, sync: am.SyncState,
                wake: Wake, flush: Callable[[], Awaitable[None]]) -> None:
    """The only generator of this connection's sync messages (one SyncState)."""
    while not session.closed:
        await wake.wait()
        wake.clear()
        message = hub.doc.sync_message(sync)
        if message is not None:
            session.send_sync(message)
            await flush()

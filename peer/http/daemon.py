"""How ``peer run`` (``peer.lan.node.Node``) starts the HTTP API and its event bus."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from tillsync.peer.http.app import serve, stop
from tillsync.peer.http.context import ApiContext
from tillsync.peer.http.controls import Controls
from tillsync.peer.http.ops import TillOps
from tillsync.peer.shutdown import cancel_and_wait

if TYPE_CHECKING:
    from tillsync.peer.lan.node import Node

log = logging.getLogger("tillsync.http")


async def start(node: Node, stack: contextlib.AsyncExitStack, host: str, port: int) -> str:
    """Serve the API for ``node`` until ``stack`` closes; returns its base URL."""
    till = node.till
    assert till is not None
    controls = Controls(till, node.config.relay)
    ctx = ApiContext(till=till, events=node.events, daemon_status=node.status,
                     sync_round=controls.round)
    watcher = asyncio.create_task(node.events.watch(till), name="tillsync events")
    stack.push_async_callback(_cancel, watcher)
    ops = TillOps(till, node.status, lambda: node.last_sync_ok)
    runner, url = await serve(node.config.path, ctx, host, port, ops,
                              node.config.automerge_limits)
    stack.push_async_callback(stop, node.config.path, runner)
    log.info("serving the till's API on %s", url)
    return url


async def _cancel(task: asyncio.Task[None]) -> None:
    # Not ``cancel(); suppress(CancelledError): await``: that can eat a cancellation of
    # the daemon's own stop (``peer.shutdown``).
    await cancel_and_wait([task], 1.0, "the API's event watcher")

"""``peer run``: the till's daemon.  It keeps the store open and, at the same time,

- listens on the LAN for the other tills of the store (websockets) and dials the ones
  it is told of (``--peer URL``) or finds by mDNS, keeping one ``PeerSession`` per link;
- syncs with the relay whenever it can (rounds of ``peer.client.sync_once``: at once
  when something new is stored, else every ``interval`` seconds; exponential backoff
  with jitter while the relay cannot be reached), carrying every device's entries up
  and bringing the relay's receipts down for the LAN to spread;
- writes what it sees of its LAN peers to ``DIR/lan.json`` for ``peer status``;
- serves the till's HTTP API for front ends (``peer.http``), through which processes
  on this machine record and edit while the daemon holds the store (``peer record``,
  ``peer put``), and publishes what changes on its event bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import websockets
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from tillsync.peer import client
from tillsync.peer.amrepo.till import ClientLimits
from tillsync.peer.errors import InvalidInput, StoreError
from tillsync.peer.http import daemon as http_api
from tillsync.peer.http.app import API_HOST
from tillsync.peer.http.events import EventBus
from tillsync.peer.lan.docsync import Mesh
from tillsync.peer.lan.session import PeerInfo, PeerSession
from tillsync.peer.shutdown import Deadlines, cancel_and_wait
from tillsync.peer.store import Till
from tillsync.peer.sync.deadlines import HANDSHAKE_TIMEOUT, close_unless_authenticated
from tillsync.peer.sync.engine import PeerLink
from tillsync.peer.sync.frames import TRANSPORT_MAX

log = logging.getLogger("tillsync.lan")
STATUS_FILE = "lan.json"
LAN_PORT = 8766
LAN_MAX_BACKOFF = 10.0  # seconds between attempts to reach a LAN peer, at most
LAN_REFUSED_BACKOFF = 300.0  # seconds before dialling again a peer that refused us for good


@dataclass
class NodeConfig:
    path: Path
    relay: str | None = None  # default: the relay the till enrolled at
    lan_host: str = "0.0.0.0"
    lan_port: int | None = LAN_PORT  # None: no LAN listener
    peers: list[str] = field(default_factory=list)  # static ws:// URLs of other tills
    mdns: bool = True
    interval: float = 5.0
    max_backoff: float = client.RELAY_MAX_BACKOFF
    relay_enabled: bool = True
    handshake_timeout: float = HANDSHAKE_TIMEOUT  # seconds an accepted link has to log in
    api_host: str = API_HOST
    api_port: int | None = None  # the HTTP API's port (0: any); None: no API
    automerge_limits: ClientLimits = field(default_factory=ClientLimits)  # /automerge's
    deadlines: Deadlines = field(default_factory=Deadlines)  # of a graceful stop


class Node:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.till: Till | None = None
        self.peers: dict[str, PeerInfo] = {}
        self.mesh = Mesh()  # who is linked with whom on the LAN, for the document's sync
        self.listening: str | None = None
        self._dialing: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._status_dirty = asyncio.Event()
        self._stop = asyncio.Event()
        self._dialled: set[Any] = set()  # open links this node dialled
        self.relay_state: dict[str, Any] = {}
        self.last_sync_ok: float | None = None  # unix time of the last good relay round
        self.events = EventBus()

    # -- life cycle --------------------------------------------------------------------

    async def run(self) -> None:
        """Run until ``stop()`` or cancellation; the store is closed on the way out."""
        config = self.config
        till = self.till = await Till.open(config.path, wait=10.0)
        try:
            if till.relay_key is None:
                raise StoreError(f"{config.path} is not enrolled at a relay: LAN sync and "
                                 "relay sync need `peer init --relay URL --code CODE`")
            async with contextlib.AsyncExitStack() as stack:
                stack.push_async_callback(self._cancel_tasks)
                if config.api_port is not None:
                    await http_api.start(self, stack, config.api_host, config.api_port)
                if config.lan_port is not None and till.cert is None:
                    log.warning("no certificate yet: LAN links start after the first sync "
                                "with the relay")
                if config.lan_port is not None:
                    try:
                        server = await serve(self._accept, config.lan_host, config.lan_port,
                                             max_size=TRANSPORT_MAX, compression=None,
                                             close_timeout=config.deadlines.close)
                    except OSError as exc:
                        raise InvalidInput(
                            f"cannot listen for LAN peers on {config.lan_host}:"
                            f"{config.lan_port}: {exc.strerror}; pick another --lan-port"
                        ) from None
                    stack.push_async_callback(self._close_lan, server)
                    port = next(iter(server.sockets)).getsockname()[1]
                    host = "127.0.0.1" if config.lan_host in ("0.0.0.0", "") \
                        else config.lan_host
                    self.listening = f"ws://{host}:{port}/"
                    if config.lan_host in ("0.0.0.0", ""):
                        log.info("listening for LAN peers on port %d of every address "
                                 "(other tills dial ws://THIS-MACHINE'S-LAN-ADDRESS:%d/)",
                                 port, port)
                    else:
                        log.info("listening for LAN peers on %s", self.listening)
                    if config.mdns:
                        await self._start_mdns(stack, port)
                for url in config.peers:
                    self.dial(url)
                if config.relay_enabled:
                    self._spawn(self._relay_loop(), "relay")
                self._spawn(self._status_loop(), "status")
                await self._stop.wait()
                # The exit stack unwinds in reverse: stop listening and close the links,
                # stop the HTTP API, cancel the loops; the store closes last.
                log.info("shutdown: stopping the daemon of %s", config.path)
        finally:
            self.till = None
            await till.close()
            log.info("shutdown: store closed")

    def stop(self) -> None:
        self._stop.set()

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=f"tillsync {name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _cancel_tasks(self) -> None:
        tasks = list(self._tasks)
        log.info("shutdown: cancelling %d tasks (relay sync, LAN dialling, status)",
                 len(tasks))
        await cancel_and_wait(tasks, self.config.deadlines.cancel, "tasks")

    async def _close_lan(self, server: Any) -> None:
        """Stop accepting LAN peers and close every LAN link, those accepted and those
        dialled, with code 1001 (going away), giving them ``deadlines.close`` seconds
        for the closing handshake; a link still open then is cancelled with the rest."""
        dialled = list(self._dialled)
        log.info("shutdown: no longer accepting LAN peers; closing %d LAN links (going "
                 "away, up to %.1f s)", len(server.connections) + len(dialled),
                 self.config.deadlines.close)
        server.close()  # stops listening, closes the accepted links with 1001
        closing = [asyncio.ensure_future(server.wait_closed())]
        closing += [asyncio.ensure_future(ws.close(1001, "till shutting down"))
                    for ws in dialled]
        _, late = await asyncio.wait(closing, timeout=self.config.deadlines.close)
        if late:
            log.warning("shutdown: LAN links still closing after %.1f s: cancelled",
                        self.config.deadlines.close)
        for task in late:
            task.cancel()

    async def _start_mdns(self, stack: contextlib.AsyncExitStack, port: int) -> None:
        from tillsync.peer.lan.discovery import Discovery

        till = self.till
        assert till is not None
        host = self.config.lan_host
        addresses = [host] if host not in ("0.0.0.0", "") else _lan_addresses()
        found = Discovery(store=till.store_id, device=till.device_id, port=port,
                          addresses=addresses, found=self._found)
        try:
            await found.start()
        except Exception as exc:  # no multicast here: the static list remains
            log.warning("mDNS discovery is off: %s", exc)
            await found.close()
            return
        stack.push_async_callback(found.close)

    def _found(self, url: str, device_id: str) -> None:
        till = self.till
        # Both tills find each other: only the one with the smaller id dials.
        if till is not None and till.device_id < device_id:
            self.dial(url)

    # -- links -------------------------------------------------------------------------

    def dial(self, url: str) -> None:
        """Keep a link to the till at ``url`` open, reconnecting with backoff."""
        if url in self._dialing:
            return
        self._dialing.add(url)
        self._spawn(self._dial_loop(url), f"dial {url}")

    async def _dial_loop(self, url: str) -> None:
        failures = 0
        refused: str | None = None
        while not self._stop.is_set():
            till = self.till
            assert till is not None
            started = time.monotonic()
            if till.cert is not None:
                try:
                    async with connect(url, max_size=TRANSPORT_MAX, compression=None,
                                       open_timeout=5,
                                       close_timeout=self.config.deadlines.close) as ws:
                        self._dialled.add(ws)
                        try:
                            link = self._link(dialer=True)
                            link.start()
                            session = PeerSession(till, link, ws, url, self.peers, self.mesh)
                            self._status_dirty.set()
                            await session.flush()
                            await session.run()
                            refused = session.refused
                        finally:
                            self._dialled.discard(ws)
                except (OSError, TimeoutError, websockets.WebSocketException) as exc:
                    log.debug("LAN peer %s: %s", url, exc)
                finally:
                    self._status_dirty.set()
            if refused is not None:
                # Another store's till, say: it would refuse again. Try again rarely (it
                # may be enrolled anew), and say so once a try.
                log.warning("LAN peer %s refuses this till: %s; trying again in %.0f s",
                            url, refused, LAN_REFUSED_BACKOFF)
                refused = None
                await asyncio.sleep(LAN_REFUSED_BACKOFF)
                continue
            failures = 0 if time.monotonic() - started > LAN_MAX_BACKOFF else failures + 1
            await asyncio.sleep(random.uniform(0.5, min(LAN_MAX_BACKOFF, 0.25 * 2 ** failures)))

    def _link(self, *, dialer: bool) -> PeerLink:
        till = self.till
        assert till is not None and till.cert is not None and till.relay_key is not None
        return PeerLink(store=till.store_id, cert=till.cert, key=till.key,
                        issuer=till.relay_key, nonce=os.urandom(32), dialer=dialer,
                        revoked=lambda device: till.revoked_upto(device) is not None,
                        now=time.time())

    async def _accept(self, ws: ServerConnection) -> None:
        till = self.till
        address = f"{ws.remote_address[0]}:{ws.remote_address[1]}"
        if till is None or till.cert is None:
            return  # no certificate yet: cannot prove who we are
        session = PeerSession(till, self._link(dialer=False), ws, address, self.peers,
                              self.mesh)
        deadline = asyncio.create_task(close_unless_authenticated(
            ws, session.authenticated, self.config.handshake_timeout, f"LAN peer {address}"))
        self._status_dirty.set()
        task = asyncio.current_task()
        if task is not None:  # cancelled with the rest if it outlives its link's closing
            self._tasks.add(task)
        try:
            await session.run()
        finally:
            deadline.cancel()
            self._tasks.discard(task)
            self._status_dirty.set()

    # -- the relay ---------------------------------------------------------------------

    async def _relay_loop(self) -> None:
        """Sync with the relay when there is something new, or every ``interval``."""
        till = self.till
        assert till is not None
        config = self.config
        failures = 0
        while True:
            synced_at = till.data_version
            try:
                report = await client.sync_once(till, config.relay)
                failures = 0
                self.last_sync_ok = time.time()
                self.relay_state = {"ok": True, "at": self.last_sync_ok,
                                    "pushed": report.pushed,
                                    "receipts": report.receipts, "pending": report.pending}
                self.events.publish("sync", self.relay_state)
                if report.pushed or report.receipts:
                    log.info("relay: pushed %d, %d receipts, %d pending", report.pushed,
                             report.receipts, report.pending)
            except client.SyncError as exc:
                failures += 1
                delay = client.retry_delay(failures, config.interval, config.max_backoff)
                self.relay_state = {"ok": False, "at": time.time(), "error": str(exc)}
                self.events.publish("sync", self.relay_state)
                log.warning("relay sync failed (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                continue
            # Wait for new entries or document changes (from the counter or the LAN),
            # or for the interval to pass.
            deadline = time.monotonic() + config.interval
            seen = till.version
            while till.data_version == synced_at and time.monotonic() < deadline:
                seen = await till.wait_changed(seen, deadline - time.monotonic())
            await asyncio.sleep(0.05)  # gather a burst into one round

    # -- status ------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        till = self.till
        mine = till.heads() if till is not None else {}
        position = till.receipts_position()[0] if till is not None else 0
        peers = []
        for info in sorted(self.peers.values(), key=lambda p: p.name):
            row = asdict(info)
            row["behind_entries"] = sum(max(0, seq - info.heads.get(device, 0))
                                        for device, seq in mine.items())
            row["behind_receipts"] = max(0, position - info.receipts_head)
            peers.append(row)
        return {"pid": os.getpid(), "updated": time.time(), "listening": self.listening,
                "peers": peers, "relay": self.relay_state}

    async def _status_loop(self) -> None:
        path = self.config.path / STATUS_FILE
        while True:
            _write_json(path, self.status())
            self.events.peers_seen(self.peers)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):  # wait_for could eat a cancellation
                    await self._status_dirty.wait()
            self._status_dirty.clear()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def read_status(path: Path) -> dict[str, Any] | None:
    """What a running daemon last wrote of its LAN peers, or None."""
    try:
        data: dict[str, Any] = json.loads((path / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data


def _lan_addresses() -> list[str]:
    """This machine's IPv4 addresses other than loopback, for the mDNS announcement."""
    import ifaddr

    out = [ip.ip for adapter in ifaddr.get_adapters() for ip in adapter.ips
           if isinstance(ip.ip, str) and not ip.ip.startswith("127.")]
    return out or ["127.0.0.1"]

"""Finding the other tills of the store on the LAN by mDNS / DNS-SD (zeroconf).

Each till announces ``<device id>._tillsync._tcp.local.`` with its LAN port and, in
the TXT record, its store and device ids.  It browses the same service type and reports
every till of its own store it finds; tills of other stores on the same network are
ignored here (and would be refused by the handshake anyway).  Discovery only suggests
addresses: trust comes from the certificate check on the link.

Networks with multicast switched off use the static list (``peer run --peer URL``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable

from zeroconf import InterfaceChoice, IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from tillsync.peer.sync.frames import PROTOCOL_VERSION

log = logging.getLogger("tillsync.lan")
SERVICE = "_tillsync._tcp.local."


class Discovery:
    """Announce this till and report the others: ``found(url, device_id)``."""

    def __init__(self, *, store: str, device: str, port: int, addresses: list[str],
                 found: Callable[[str, str], None]) -> None:
        self.store, self.device, self.port = store, device, port
        self._addresses = addresses
        self._found = found
        self._zc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: AsyncServiceInfo | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        interfaces: list[str] | None = None
        if self._addresses and all(a.startswith("127.") for a in self._addresses):
            interfaces = self._addresses  # loopback only: tests and single-machine demos
        self._zc = AsyncZeroconf(interfaces=interfaces or InterfaceChoice.All,
                                 ip_version=IPVersion.V4Only)
        self._info = AsyncServiceInfo(
            SERVICE, f"{self.device}.{SERVICE}", port=self.port,
            addresses=[socket.inet_aton(a) for a in self._addresses],
            properties={"store": self.store, "device": self.device, "v": str(PROTOCOL_VERSION)},
            server=f"tillsync-{self.device[:8]}.local.",
        )
        await self._zc.async_register_service(self._info, allow_name_change=True)
        self._browser = AsyncServiceBrowser(self._zc.zeroconf, [SERVICE],
                                            handlers=[self._on_change])
        log.info("mDNS: announcing %s on port %d", SERVICE, self.port)

    def _on_change(self, zeroconf: Zeroconf, service_type: str, name: str,
                   state_change: ServiceStateChange) -> None:
        if state_change in (ServiceStateChange.Added, ServiceStateChange.Updated):
            task = asyncio.get_running_loop().create_task(self._resolve(service_type, name))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _resolve(self, service_type: str, name: str) -> None:
        assert self._zc is not None
        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(self._zc.zeroconf, 3000):
            return
        props = {k.decode(): (v or b"").decode() for k, v in info.properties.items()}
        if props.get("store") != self.store or props.get("device") == self.device:
            return
        for address in info.parsed_addresses(IPVersion.V4Only):
            self._found(f"ws://{address}:{info.port}/", props.get("device", ""))
            return

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._zc is not None:
            with contextlib.suppress(Exception):
                if self._browser is not None:
                    await self._browser.async_cancel()
                if self._info is not None:
                    await self._zc.async_unregister_service(self._info)
                await self._zc.async_close()

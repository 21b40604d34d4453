"""Many devices logging in at once: the relay writes their logins together (one
transaction for those that arrive while another is being written), and every device's
login is stored, on both backends."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

from websockets.asyncio.client import connect

from tests.relay.processes import RelayProcess, cli_json, on_relay
from tillsync.peer.identity import DeviceKey
from tillsync.peer.sync.engine import ClientLink, Ready
from tillsync.peer.sync.frames import TRANSPORT_MAX
from tillsync.relay.server import Relay
from tillsync.tools.bench_connections import enroll, handshake

DEVICES = 40


def where(relay: RelayProcess) -> list[str]:
    return ["--db", relay.db] if relay.db else ["--data", str(relay.data)]


async def login(url: str, store: str, device: str, key: DeviceKey, relay_key: bytes) -> None:
    link = ClientLink(store=store, device=device, key=key, nonce=os.urandom(32),
                      relay_key=relay_key)
    link.start()
    async with connect(url, max_size=TRANSPORT_MAX, compression=None) as ws:
        assert isinstance(await handshake(ws, link), Ready)


async def test_every_device_of_a_crowd_logging_in_at_once_is_seen(
        relay: RelayProcess, tmp_path: Path) -> None:
    store = f"store-{uuid.uuid4().hex[:8]}"

    async def codes(opened: Relay) -> list[str]:
        return [await opened.new_code(store, f"Till {i}") for i in range(DEVICES)]

    enrolled = await asyncio.gather(*(enroll(relay.url, code, i, store)
                                      for i, code in enumerate(on_relay(relay.data, relay.db,
                                                                        codes))))
    before = {d["device_id"]: d for d in cli_json("report", "devices", *where(relay),
                                                  "--store", store)}
    assert len(before) == DEVICES and not any(d["last_seen"] for d in before.values())

    await asyncio.gather(*(login(relay.url, store, *device) for device in enrolled))

    after = {d["device_id"]: d for d in cli_json("report", "devices", *where(relay),
                                                 "--store", store)}
    assert sorted(after) == sorted(device for device, _, _ in enrolled)
    assert all(d["last_seen"] for d in after.values()), after

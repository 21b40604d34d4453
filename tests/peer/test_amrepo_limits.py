"""A real ``peer run`` daemon holds its automerge-repo clients (``/automerge``) to the
same kind of limits as the relay: a websocket whose ``join`` never comes is closed with
the handshake close code after ``--automerge-handshake-timeout``, and a joined client on
which no frame passes either way is closed with the idle code after
``--automerge-idle-timeout``.  The relay is only needed to enroll the till."""

from __future__ import annotations

import asyncio
from pathlib import Path

import cbor2
from websockets.asyncio.client import connect

from tests.peer.http_client import Api
from tests.peer.lan_processes import LanTill
from tests.relay.processes import Relays, closed_with, in_thread
from tillsync.peer.sync.deadlines import CLOSE_HANDSHAKE_TIMEOUT, CLOSE_IDLE

STORE = "shop-amrepo-limits"
JOIN = cbor2.dumps({"type": "join", "senderId": "node-1", "peerMetadata": {},
                    "supportedProtocolVersions": ["1"]})


def test_a_client_that_never_joins_or_goes_quiet_is_closed(tmp_path: Path) -> None:
    till = LanTill(tmp_path / "till", "Till 1")
    with Relays(tmp_path) as relays:
        relay = relays.start()
        till.init(relay, STORE)
        relay.kill()
    till.start([], relay=False, lan=False, extra=[
        "--automerge-handshake-timeout", "0.5", "--automerge-idle-timeout", "0.5"])
    try:
        api = Api.of(till.path)
        url = api.base.replace("http://", "ws://") + f"/automerge?token={api.token}"

        async def run() -> tuple[tuple[int | None, str], dict[str, object],
                                 tuple[int | None, str]]:
            async with connect(url, compression=None) as silent:
                timed_out = await closed_with(silent)
            async with connect(url, compression=None) as joined:
                await joined.send(JOIN)
                async with asyncio.timeout(30):
                    answer = cbor2.loads(await joined.recv())
                idle = await closed_with(joined)
            return timed_out, answer, idle

        timed_out, answer, idle = in_thread(run)
        assert timed_out == (CLOSE_HANDSHAKE_TIMEOUT, "handshake not completed within 0.5 s")
        assert answer["type"] == "peer" and answer["targetId"] == "node-1"
        assert idle == (CLOSE_IDLE, "idle: no frame for 0.5 s")
        log = till.log()
        assert "no handshake within 0.5 s" in log
        assert "no frame for 0.5 s" in log
        # The daemon serves on: a new client still joins.

        async def again() -> object:
            async with connect(url, compression=None) as ws:
                await ws.send(JOIN)
                async with asyncio.timeout(30):
                    return cbor2.loads(await ws.recv())["type"]

        assert in_thread(again) == "peer"
    finally:
        till.stop()
